"""Long tables to panels: ``dg.from_long``, ``daskglm ingest`` and ``dg.fit(table, dims=...)``.

References are independent of daskglm: the generated truth arrays (every value column is drawn
on its own dims, so where it belongs is known), pandas on the long table itself (round trip),
and statsmodels / pyfixest fitted on the same long rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm
import xarray as xr

import daskglm as dg
from daskglm.api.cli import main as cli_main

DIMS = ["i", "j", "k"]
I_LABELS = ["USA", "CHN", "DEU", "FRA", "JPN", "BRA", "IND"]  # strings, given unsorted
J_LABELS = [30, 10, 50, 20, 40, 60]  # integers
K_LABELS = pd.date_range("2001-01-01", periods=8, freq="YS")  # dates


def make_long(seed: int = 0, keep: float = 0.75):
    """A shuffled, unbalanced 3-D long table and the truth of each column on its own dims."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = len(I_LABELS), len(J_LABELS), len(K_LABELS)
    truth = {
        "x_ijk": (("i", "j", "k"), rng.normal(size=(ni, nj, nk))),
        "x_ij": (("i", "j"), rng.normal(size=(ni, nj))),
        "x_ik": (("i", "k"), rng.normal(size=(ni, nk))),
        "x_i": (("i",), rng.normal(size=ni)),
        "n_k": (("k",), rng.integers(1, 9, size=nk)),  # integers
        "flag_j": (("j",), rng.random(nj) < 0.5),  # booleans, read as 0/1
        "c": ((), 2.5),  # constant everywhere: a scalar
    }
    ii, jj, kk = (a.ravel() for a in np.meshgrid(np.arange(ni), np.arange(nj), np.arange(nk), indexing="ij"))
    rows = np.flatnonzero(rng.random(ii.size) < keep)
    rows = rng.permutation(rows)  # shuffled
    ii, jj, kk = ii[rows], jj[rows], kk[rows]
    codes = {"i": ii, "j": jj, "k": kk}
    df = pd.DataFrame(
        {
            "k": K_LABELS[kk],
            "i": np.array(I_LABELS, dtype=object)[ii],
            "j": np.array(J_LABELS)[jj],
        }
    )
    for name, (vdims, arr) in truth.items():
        arr = np.asarray(arr)
        df[name] = arr[tuple(codes[d] for d in vdims)] if vdims else np.full(len(df), arr)
    eta = 0.3 + 0.2 * df["x_ijk"] - 0.3 * df["x_ij"] + 0.25 * df["x_ik"] + 0.4 * df["x_i"] + 0.05 * df["n_k"]
    df["y"] = rng.poisson(np.exp(eta)).astype(float)
    return df, truth


def sorted_positions(labels, values) -> np.ndarray:
    """Position of each value among the sorted labels (how from_long orders coordinates)."""
    idx = pd.Index(sorted(labels))
    return idx.get_indexer(values)


EXPECTED_DIMS = {
    "x_ijk": ["i", "j", "k"],
    "x_ij": ["i", "j"],
    "x_ik": ["i", "k"],
    "x_i": ["i"],
    "n_k": ["k"],
    "flag_j": ["j"],
    "c": [],
    "y": ["i", "j", "k"],
}


def check_panel(ds: xr.Dataset, df: pd.DataFrame, truth: dict) -> None:
    """Coordinates, the dims of every column, its values, and NaN where no row."""
    assert list(ds["i"].values) == sorted(I_LABELS)
    assert list(ds["j"].values) == sorted(J_LABELS)
    assert pd.DatetimeIndex(ds["k"].values).equals(pd.DatetimeIndex(K_LABELS))
    for v, dims in EXPECTED_DIMS.items():
        assert list(ds[v].dims) == dims, v
        assert ds[v].attrs["long_table_dims"] == dims, v
    # small variables equal the truth, re-ordered to the sorted labels
    order = {
        "i": np.argsort(I_LABELS, kind="stable"),
        "j": np.argsort(J_LABELS, kind="stable"),
        "k": np.arange(len(K_LABELS)),
    }
    for v, (vdims, arr) in truth.items():
        want = np.asarray(arr, dtype=float)
        for axis, d in enumerate(vdims):
            want = want.take(order[d], axis=axis)
        if v == "x_ijk":  # full grid: only the cells with a row
            got = ds[v].values
            want = np.where(np.isnan(got), np.nan, want)
        np.testing.assert_array_equal(ds[v].values, want, err_msg=v)
    # every row's values sit in its cell
    pos = {
        "i": sorted_positions(I_LABELS, df["i"]),
        "j": sorted_positions(J_LABELS, df["j"]),
        "k": pd.DatetimeIndex(K_LABELS).get_indexer(df["k"]),
    }
    for v in EXPECTED_DIMS:
        got = (
            ds[v].values[tuple(pos[d] for d in ds[v].dims)] if ds[v].dims else np.full(len(df), ds[v].item())
        )
        np.testing.assert_array_equal(got, df[v].to_numpy(dtype=float), err_msg=v)
    assert int(np.isfinite(ds["y"].values).sum()) == len(df)  # the other cells are NaN
    assert ds.attrs["fill_rate"] == pytest.approx(len(df) / ds["y"].size)


def to_long(ds: xr.Dataset) -> pd.DataFrame:
    """Back to one row per observed cell (the rows whose y is not NaN)."""
    out = ds.to_dataframe().dropna(subset=["y"]).reset_index()
    return out.sort_values(DIMS).reset_index(drop=True)


def test_from_long_pandas_dims_values_and_round_trip():
    df, truth = make_long()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 75 %-full grid gets no sparsity warning
        ds = dg.from_long(df, dims=DIMS, piece_rows=37)  # many pieces: detection across pieces
    check_panel(ds, df, truth)
    assert "x_ik on (i, k)" in ds.attrs["from_long"] and "c on ()" in ds.attrs["from_long"]
    back = to_long(ds)
    want = df.sort_values(DIMS).reset_index(drop=True)
    assert len(back) == len(want)
    for col in want.columns:
        if col == "k":
            assert pd.DatetimeIndex(back[col]).equals(pd.DatetimeIndex(want[col]))
        elif col in DIMS:
            assert back[col].tolist() == want[col].tolist()
        else:
            np.testing.assert_array_equal(back[col].to_numpy(float), want[col].to_numpy(float), err_msg=col)


def _sources(df: pd.DataFrame, tmp_path):
    """The same table as every kind of input from_long takes."""
    import dask.dataframe as dd

    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=50)
    (tmp_path / "parts").mkdir()
    (tmp_path / "csv").mkdir()
    for n, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        pq.write_table(table.take(part), tmp_path / "parts" / f"part-{n}.parquet")
        df.iloc[part].to_csv(tmp_path / "csv" / f"part-{n}.csv", index=False)
    return {
        "pyarrow": table,
        "dask": dd.from_pandas(df, npartitions=4),
        "parquet file": str(tmp_path / "one.parquet"),
        "parquet folder": str(tmp_path / "parts"),
        "parquet glob": str(tmp_path / "parts" / "part-*.parquet"),
        "csv folder": str(tmp_path / "csv"),
    }


def test_every_kind_of_table_gives_the_same_panel(tmp_path):
    df, truth = make_long(seed=1)
    for name, table in _sources(df, tmp_path).items():
        ds = dg.from_long(table, dims=DIMS, piece_rows=64)
        try:
            check_panel(ds, df, truth)
        except AssertionError as err:
            raise AssertionError(f"from {name}: {err}") from err


def test_urls_through_fsspec():
    """A table and a store at fsspec URLs (the in-memory filesystem stands in for s3:// etc.)."""
    import fsspec

    df, truth = make_long(seed=6)
    fs = fsspec.filesystem("memory")
    with fs.open("memory://daskglm-test/flows/a.parquet", "wb") as f:
        df.to_parquet(f, index=False)
    try:
        ds = dg.from_long("memory://daskglm-test/flows", DIMS, to="memory://daskglm-test/panel.zarr")
        check_panel(ds.load(), df, truth)
    finally:
        fs.rm("memory://daskglm-test", recursive=True)


def test_exact_detection_over_all_rows():
    """A column constant on (i, j) except in one row of the last piece lives on the full grid;
    NaN counts as a value; a column varying only along k in the first pieces still lands on k."""
    df, _ = make_long(seed=2)
    df = df.sort_values(DIMS).reset_index(drop=True)
    df["almost_ij"] = df["x_ij"]
    df.loc[len(df) - 1, "almost_ij"] += 1e-12
    df["nan_i"] = np.where(df["i"] == "CHN", np.nan, df["x_i"])
    ds = dg.from_long(df, dims=DIMS, values=["y", "almost_ij", "nan_i", "n_k"], piece_rows=16)
    assert ds["almost_ij"].dims == ("i", "j", "k")
    assert ds["nan_i"].dims == ("i",) and np.isnan(ds["nan_i"].sel(i="CHN"))
    assert ds["n_k"].dims == ("k",)
    assert list(ds.data_vars) == ["y", "almost_ij", "nan_i", "n_k"]


def _long_for_fits():
    df, _ = make_long(seed=3, keep=0.9)
    df = pd.concat([df, make_long(seed=3, keep=0.9)[0].assign(i=lambda d: d["i"] + "2")], ignore_index=True)
    return df, ["x_ijk", "x_ij", "x_ik", "x_i", "n_k", "flag_j"]


def test_fit_takes_a_long_table_equal_to_statsmodels():
    """dg.fit(table, ..., dims=) equals statsmodels' GLM on the same long rows (1e-6)."""
    df, x = _long_for_fits()
    res = dg.fit(df, "y", x, "poisson", dims=DIMS, progress=False, tol=1e-12)
    X = sm.add_constant(df[x].astype(float)).rename(columns={"const": "Intercept"})
    ref = sm.GLM(df["y"], X, family=sm.families.Poisson()).fit(tol=1e-13)
    for name in ["Intercept"] + x:
        assert res.params[name] == pytest.approx(ref.params[name], abs=1e-6), name
        assert res.bse[name] == pytest.approx(ref.bse[name], rel=1e-5), name
    assert res.llf == pytest.approx(ref.llf, rel=1e-9)
    assert res.nobs == len(df)


def test_fit_takes_a_long_table_equal_to_pyfixest():
    """The same through pyfixest's fepois and feols (no fixed effects), coefficients to 1e-6."""
    pf = pytest.importorskip("pyfixest")
    df, x = _long_for_fits()
    res = dg.fit(df, "y", x, "poisson", dims=DIMS, progress=False, tol=1e-12)
    data = df.assign(flag_j=df["flag_j"].astype(float))
    fe = pf.fepois("y ~ " + " + ".join(x), data=data, vcov="iid")
    np.testing.assert_allclose(res.params[["Intercept"] + x], fe.coef().to_numpy(), atol=1e-6)
    ols = dg.fit(df, "x_ijk", ["x_ij", "x_ik", "x_i"], "gaussian", dims=DIMS, progress=False)
    fo = pf.feols("x_ijk ~ x_ij + x_ik + x_i", data=data, vcov="iid")
    np.testing.assert_allclose(
        ols.params[["Intercept", "x_ij", "x_ik", "x_i"]], fo.coef().to_numpy(), atol=1e-8
    )
    np.testing.assert_allclose(ols.bse[["Intercept", "x_ij", "x_ik", "x_i"]], fo.se().to_numpy(), rtol=1e-6)


def test_a_long_table_without_dims_is_refused():
    df, _ = make_long()
    with pytest.raises(TypeError, match="dims="):
        dg.fit(df, "y", ["x_i"], "poisson")


def test_store_equals_memory_and_fits_agree(tmp_path):
    """Streamed into zarr (small pieces, small chunks, spill files forced by a tiny budget) it is
    the in-memory panel, and fits on both agree to 1e-10."""
    df, truth = make_long(seed=4)
    mem = dg.from_long(df, dims=DIMS)
    path = tmp_path / "panel.zarr"
    store = dg.from_long(df, DIMS, to=path, chunks={"i": 2, "j": 4, "k": 3}, piece_rows=29, memory=1000)
    check_panel(store.load(), df, truth)
    assert store["y"].encoding["chunks"] == (2, 4, 3)
    for v in mem.data_vars:
        np.testing.assert_array_equal(store[v].values, mem[v].values, err_msg=v)
    x = ["x_ijk", "x_ij", "x_ik", "x_i", "n_k"]
    a = dg.fit(mem, "y", x, "poisson", progress=False)
    b = dg.fit(str(path), "y", x, "poisson", progress=False)
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.bse.to_numpy(), b.bse.to_numpy(), rtol=1e-10)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        dg.from_long(df, DIMS, to=path)


def test_csv_folder_ingest_through_the_cli(tmp_path, capsys):
    df, truth = make_long(seed=5)
    folder = tmp_path / "csv"
    folder.mkdir()
    for n, part in enumerate(np.array_split(np.arange(len(df)), 4)):
        df.iloc[part].to_csv(folder / f"flows-{n}.csv", index=False)
    out = tmp_path / "panel.zarr"
    rc = cli_main(
        ["ingest", str(folder), "--dims", "i,j,k", "--out", str(out), "--chunks", "i=3", "--no-progress"]
    )
    assert rc == 0
    assert "x_ik on (i, k)" in capsys.readouterr().out
    ds = xr.open_zarr(out)
    assert ds["y"].encoding["chunks"] == (3, len(J_LABELS), len(K_LABELS))
    check_panel(ds.load(), df, truth)
    assert cli_main(["ingest", str(folder), "--dims", "i,jj,k", "--out", str(tmp_path / "b.zarr")]) == 2
    assert "did you mean 'j'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- bad tables


def test_duplicate_keys_are_shown(tmp_path):
    df, _ = make_long()
    dup = pd.concat([df, df.iloc[[3, 10]]], ignore_index=True)
    with pytest.raises(ValueError, match=r"duplicate keys: 2 row.*\(i='[A-Z]{3}', j=\d+, k='20\d\d-01-01'\)"):
        dg.from_long(dup, DIMS)
    with pytest.raises(ValueError, match="duplicate keys.*groupby"):
        dg.from_long(dup, DIMS, to=tmp_path / "dup.zarr", piece_rows=50)
    assert not (tmp_path / "dup.zarr").exists()  # no half-written store is left behind


def test_key_with_nan():
    df, _ = make_long()
    df.loc[5, "j"] = np.nan
    with pytest.raises(
        ValueError, match=r"key column 'j' is missing \(NaN/null\) in 1 row.*rows 5\b.*dropna"
    ):
        dg.from_long(df, DIMS)


def test_dim_that_is_not_a_column():
    df, _ = make_long()
    with pytest.raises(ValueError, match=r"dims: 'yr' is not a column.*did you mean 'y'"):
        dg.from_long(df, ["i", "j", "yr"])
    with pytest.raises(ValueError, match="is not a column"):
        dg.from_long(pa.Table.from_pandas(df), ["i", "exporter"])


@pytest.mark.parametrize("kind", ["pandas", "pyarrow"])
def test_non_numeric_value_column(kind):
    df, _ = make_long()
    df["region"] = np.where(df["i"].isin(["USA", "BRA"]), "americas", "other")
    table = df if kind == "pandas" else pa.Table.from_pandas(df)
    with pytest.raises(ValueError, match=r"value column 'region' is .*not numeric.*fe=.*get_dummies"):
        dg.from_long(table, DIMS)
    ds = dg.from_long(table, DIMS, values=["y", "flag_j"])  # or leave it out
    assert ds["flag_j"].dtype == np.float64 and set(np.unique(ds["flag_j"])) <= {0.0, 1.0}


def test_sparse_grid_warns_and_names_the_nested_dim():
    rng = np.random.default_rng(0)
    city = np.repeat(np.arange(300), 5)  # 300 cities in 30 countries: a 30x larger grid
    df = pd.DataFrame({"city": city, "country": city // 10, "year": np.tile(np.arange(5), 300)})
    df["y"] = rng.poisson(2, len(df)).astype(float)
    with pytest.warns(UserWarning, match=r"reconsider the dims: 'city' determines 'country'"):
        ds = dg.from_long(df, ["city", "country", "year"])
    assert ds.attrs["fill_rate"] == pytest.approx(1 / 30)


# ------------------------------------------------------------------------------- memory

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import pandas as pd
    import daskglm as dg

    def high_water():  # this process's own peak RSS (ru_maxrss may carry the parent's over fork+exec)
        return [int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith("VmHWM:")][0]

    path, tmp = sys.argv[1:3]
    # the baseline: every import and code path, on a tiny table
    df = pd.DataFrame({"e": ["a", "b"], "i": ["c", "c"], "t": [1, 1], "p": ["x", "x"], "y": [1.0, 2.0]})
    dg.from_long(df, ["e", "i", "t", "p"], to=tmp + "/tiny.zarr", progress=False)
    base = high_water()
    dg.from_long(path, ["e", "i", "t", "p"], to=tmp + "/big.zarr", progress=False, memory=32 << 20)
    print(json.dumps({"base": base, "peak": high_water()}))
    """
)


def _labels(prefix: str, codes: np.ndarray, n: int) -> pa.Array:
    """String keys that sort like their codes, built fast through a dictionary array."""
    names = pa.array([f"{prefix}{c:03d}" for c in range(n)])
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), names).cast(pa.string())


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_ingest_a_table_several_times_larger_than_its_memory(tmp_path):
    """An 8e6-row parquet file (0.58 GB in memory, what pandas would hold) ingests into zarr with
    a peak at most ``cap`` (a third of the table) above the process's baseline (imports and a tiny
    ingest), and every cell is right. Measured: about 0.14 GB above the baseline, most of it
    arrow's parquet reader and the allocator's retention; it does not grow with the rows."""
    cap = 190e6
    rng = np.random.default_rng(7)
    sizes = (100, 100, 20, 80)
    n = 8_000_000
    cells = rng.choice(int(np.prod(sizes)), size=n, replace=False)
    e, i, t, p = np.unravel_index(cells, sizes)
    dist = rng.normal(size=sizes[:2])
    gdp = rng.normal(size=(sizes[0], sizes[2]))
    tariff = rng.normal(size=sizes[1:])
    table = pa.table(
        {
            "e": _labels("E", e, sizes[0]),
            "i": _labels("I", i, sizes[1]),
            "t": pa.array(2000 + t),
            "p": _labels("P", p, sizes[3]),
            "y": rng.poisson(3.0, n).astype(float),
            "x": rng.normal(size=n),
            "dist": dist[e, i],
            "gdp": gdp[e, t],
            "tariff": tariff[i, t, p],
        }
    )
    table_bytes = table.nbytes
    assert table_bytes > 3 * cap
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=1 << 17)
    del table
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    extra = mem["peak"] - mem["base"]
    print(f"\ntable {table_bytes / 1e6:.0f} MB; ingest peak {extra / 1e6:.0f} MB above the baseline")
    assert extra < cap
    ds = xr.open_zarr(tmp_path / "big.zarr")
    assert (
        ds["dist"].dims == ("e", "i")
        and ds["gdp"].dims == ("e", "t")
        and ds["tariff"].dims == ("i", "t", "p")
    )
    assert ds["x"].ndim == 4
    got = ds["y"].values.reshape(-1)
    assert int(np.isfinite(got).sum()) == n
    np.testing.assert_array_equal(got[cells], pq.read_table(path, columns=["y"]).column("y").to_numpy())
    np.testing.assert_array_equal(ds["dist"].values, dist)
    np.testing.assert_array_equal(ds["tariff"].values, tariff)
