"""The compression codec of the stores daskglm writes (``codec=``, ``--codec``).

Every codec is lossless: the arrays read back from a real store on disk equal, bit for bit,
the ones written (simulated float32/float64 panels and a long table with NaN cells); the store's
metadata names the codec asked for; the default is the one the README, the docstrings and the
CLI help name; a bad codec is refused with the option, the problem and the choices, before
anything is simulated, read or written.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import daskglm as dg
from daskglm.api.cli import main
from daskglm.api.simulate import simulate_panel
from daskglm.frontend.tables import CODECS, DEFAULT_CODEC, write_zarr, zarr_compressors

README = Path(__file__).resolve().parents[1] / "README.md"

# codec spec -> (class, cname or None, level) expected in the store's metadata (None: uncompressed)
EXPECTED = {
    "none": None,
    "lz4": (BloscCodec, "lz4", 5),
    "lz4:1": (BloscCodec, "lz4", 1),
    "zstd": (ZstdCodec, None, 3),
    "zstd:1": (ZstdCodec, None, 1),
    "zstd:3": (ZstdCodec, None, 3),
    "ZSTD:9": (ZstdCodec, None, 9),
}


def stored_codec(path, var: str):
    """(class, cname, level) of a variable's compressor as read back from the store's metadata."""
    comps = zarr.open_group(str(path), mode="r")[var].compressors
    if not comps:
        return None
    (c,) = comps
    if isinstance(c, BloscCodec):
        assert c.shuffle.value == "bitshuffle"
        return (BloscCodec, c.cname.value, c.clevel)
    return (type(c), None, c.level)


def small_panel(dtype=np.float32) -> xr.Dataset:
    return simulate_panel(
        {"i": 12, "j": 10, "k": 7}, "poisson", chunks={"i": 5, "j": 4}, missing_fraction=0.2, dtype=dtype
    )


def long_table(seed: int = 0) -> pd.DataFrame:
    """A shuffled long table over (a, b) with some cells missing, integer counts and a dummy."""
    rng = np.random.default_rng(seed)
    a, b = np.meshgrid(np.arange(9), np.arange(6), indexing="ij")
    keep = rng.random(a.size) < 0.8
    df = pd.DataFrame({"a": [f"a{v}" for v in a.ravel()[keep]], "b": b.ravel()[keep]})
    df["y"] = rng.poisson(0.7, size=len(df)).astype(float)
    df["dummy"] = (rng.random(len(df)) < 0.3).astype(float)
    df["x"] = rng.normal(size=len(df))
    return df.sample(frac=1.0, random_state=seed)


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec", list(EXPECTED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_write_zarr_round_trips_every_codec(codec, dtype, tmp_path):
    ds = small_panel(dtype).compute()
    path = tmp_path / "p.zarr"
    write_zarr(ds, path, codec=codec)
    back = xr.open_zarr(path).compute()
    for v in ds.data_vars:
        assert back[v].dtype == ds[v].dtype
        np.testing.assert_array_equal(back[v].values, ds[v].values, err_msg=v)  # NaN cells included
        assert stored_codec(path, v) == EXPECTED[codec], v
    assert back.attrs["true_params"] == ds.attrs["true_params"]


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd:3"])
def test_from_long_store_round_trips_every_codec(codec, tmp_path):
    df = long_table()
    memory = dg.from_long(df, ["a", "b"], dtype="float32")
    path = tmp_path / "p.zarr"
    ds = dg.from_long(df, ["a", "b"], to=path, chunks={"a": 4}, dtype="float32", codec=codec)
    assert set(ds.data_vars) == set(memory.data_vars) == {"y", "dummy", "x"}
    for v in memory.data_vars:
        np.testing.assert_array_equal(ds[v].values, memory[v].values, err_msg=v)
        assert stored_codec(path, v) == EXPECTED[codec], v
    # independent check of a few cells against the table itself
    row = df.iloc[0]
    assert ds["x"].sel(a=row["a"], b=row["b"]).values == np.float32(row["x"])
    assert int(np.isnan(ds["y"].values).sum()) == 9 * 6 - len(df)


def test_cli_simulate_round_trips_and_records_the_codec(tmp_path, capsys):
    path = tmp_path / "p.zarr"
    argv = ["simulate", str(path), "--dims", "i=12,j=10,k=7", "--chunks", "i=5,j=4", "--dtype", "float32"]
    assert main(argv + ["--codec", "zstd:3", "--seed", "4"]) == 0
    capsys.readouterr()
    want = simulate_panel(
        {"i": 12, "j": 10, "k": 7}, "poisson", chunks={"i": 5, "j": 4}, seed=4, dtype=np.float32
    ).compute()
    back = xr.open_zarr(path).compute()
    for v in want.data_vars:
        np.testing.assert_array_equal(back[v].values, want[v].values, err_msg=v)
        assert stored_codec(path, v) == (ZstdCodec, None, 3)


def test_cli_ingest_writes_the_codec(tmp_path, capsys):
    table = tmp_path / "t.parquet"
    df = long_table(1)
    df.to_parquet(table, index=False)
    out = tmp_path / "p.zarr"
    argv = ["ingest", str(table), "--dims", "a,b", "--out", str(out), "--no-progress", "--codec", "none"]
    assert main(argv) == 0
    capsys.readouterr()
    memory = dg.from_long(df, ["a", "b"])
    back = xr.open_zarr(out).compute()
    for v in ("y", "dummy", "x"):
        np.testing.assert_array_equal(back[v].values, memory[v].values, err_msg=v)
        assert stored_codec(out, v) is None


# ------------------------------------------------------------------------------- the default


def test_the_default_is_what_the_docs_say(tmp_path, capsys):
    assert DEFAULT_CODEC == "lz4"
    default = EXPECTED[DEFAULT_CODEC]
    # the API writers
    ds = small_panel()
    write_zarr(ds, tmp_path / "w.zarr")
    assert stored_codec(tmp_path / "w.zarr", "y") == default
    dg.from_long(long_table(), ["a", "b"], to=tmp_path / "f.zarr")
    assert stored_codec(tmp_path / "f.zarr", "x") == default
    # both commands, without --codec
    assert main(["simulate", str(tmp_path / "s.zarr"), "--dims", "i=6,j=5"]) == 0
    assert stored_codec(tmp_path / "s.zarr", "y") == default
    pq = tmp_path / "t.parquet"
    long_table().to_parquet(pq, index=False)
    assert main(["ingest", str(pq), "--dims", "a,b", "--out", str(tmp_path / "i.zarr"), "--no-progress"]) == 0
    assert stored_codec(tmp_path / "i.zarr", "y") == default
    capsys.readouterr()
    # what the help, the docstrings and the README say
    for command in ("simulate", "ingest"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--codec" in text and f"default {DEFAULT_CODEC}" in text, command
    assert f"``{DEFAULT_CODEC!r}`` (default".replace("'", '"') in " ".join(write_zarr.__doc__.split())
    assert f"``{DEFAULT_CODEC!r}`` (default".replace("'", '"') in " ".join(dg.from_long.__doc__.split())
    readme = " ".join(README.read_text().split())
    assert f"`--codec {DEFAULT_CODEC}` (the default" in readme


# ------------------------------------------------------------------------------- bad codecs


@pytest.mark.parametrize(
    "codec, message",
    [
        (
            "lz5",
            r"codec='lz5' is not a codec \(did you mean 'lz4'\?\): choose none, lz4\[:LEVEL 1-9\] or zstd",
        ),
        ("gzip", r"codec='gzip' is not a codec: choose none, lz4"),
        ("zstd:99", r"codec='zstd:99': the zstd level must be an integer 1-22"),
        ("lz4:0", r"codec='lz4:0': the lz4 level must be an integer 1-9"),
        ("zstd:fast", r"codec='zstd:fast': the zstd level must be an integer 1-22"),
        ("none:3", r"codec='none:3': 'none' takes no level; choose none, lz4"),
        (None, r"codec=None must be a string: choose none, lz4"),
    ],
)
def test_bad_codec_is_refused_with_the_choices(codec, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        zarr_compressors(codec)
    with pytest.raises(ValueError, match=message):
        write_zarr(small_panel(), tmp_path / "w.zarr", codec=codec)
    assert not (tmp_path / "w.zarr").exists()
    with pytest.raises(ValueError, match=message):
        dg.from_long(long_table(), ["a", "b"], to=tmp_path / "f.zarr", codec=codec)
    assert not (tmp_path / "f.zarr").exists()


def test_bad_codec_through_the_cli_exits_2_naming_the_option(tmp_path, capsys):
    pq = tmp_path / "t.parquet"
    long_table().to_parquet(pq, index=False)
    for argv in (
        ["simulate", str(tmp_path / "s.zarr"), "--dims", "i=6,j=5", "--codec", "blosc"],
        ["ingest", str(pq), "--dims", "a,b", "--out", str(tmp_path / "i.zarr"), "--codec", "blosc"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(r"--codec='blosc' is not a codec: choose none, lz4\[:LEVEL 1-9\] or zstd", err), err
        assert "Traceback" not in err
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "i.zarr").exists()


def test_codec_names_are_the_documented_ones():
    assert CODECS == ("none", "lz4", "zstd")
    for name in CODECS:
        assert (zarr_compressors(name) is None) == (name == "none")
