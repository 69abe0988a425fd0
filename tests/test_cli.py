"""The ``daskglm`` command line: simulate -> info -> fit, against the Python API and the truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import daskglm as dg
from daskglm.cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "panel.zarr"
    rc = main(
        [
            "simulate",
            str(path),
            "--dims",
            "i=40,j=30,k=12",
            "--family",
            "poisson",
            "--block",
            "x_ijk=i,j,k:2",
            "--block",
            "x_ij=i,j",
            "--block",
            "x_k=k",
            "--chunks",
            "i=20,j=15",
            "--exposure",
            "--dtype",
            "float32",
            "--seed",
            "5",
        ]
    )
    assert rc == 0
    return path


def test_simulate_writes_chunks_and_truth(store):
    import xarray as xr

    ds = xr.open_zarr(store)
    assert dict(ds.sizes) == {"i": 40, "j": 30, "k": 12}
    assert ds["y"].chunks[0] == (20, 20) and ds["y"].dtype == np.float32
    truth = json.loads(ds.attrs["true_params"])
    assert set(truth) == {"Intercept", "x_ijk_1", "x_ijk_2", "x_ij_1", "x_k_1"}


def test_info_lists_variables_and_blocks(store, capsys):
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "panel dims (those of 'y'): i=40, j=30, k=12" in out
    assert "chunks of y: i=20, j=15, k=12" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and ln.split()[0].startswith(("x_", "exp"))}
    assert lines["x_ijk_1"].endswith("(i, j, k)")
    assert lines["x_ij_1"].endswith("(i, j)")
    assert lines["exposure"].endswith("(i, j)")


def test_fit_writes_results_matching_the_api(store, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(
        ["fit", str(store), "--y", "y", "--family", "poisson", "--exposure", "exposure", "--out", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "coef" in printed and "wrote" in printed
    got = json.loads(out.read_text())
    x = ["x_ijk_1", "x_ijk_2", "x_ij_1", "x_k_1"]
    ref = dg.fit(str(store), "y", x, "poisson", exposure="exposure")
    np.testing.assert_allclose(pd_series(got["params"])[ref.params.index], ref.params, rtol=1e-12)
    np.testing.assert_allclose(pd_series(got["bse"])[ref.bse.index], ref.bse, rtol=1e-12)
    assert np.array(got["cov_params"]["matrix"]).shape == (5, 5)
    d = got["diagnostics"]
    assert d["converged"] and d["nobs"] == 40 * 30 * 12 and len(d["history"]) >= d["n_iter"]
    assert d["llf"] == pytest.approx(ref.llf, rel=1e-12)
    # and the simulator's truth is recovered (within 4 standard errors)
    import xarray as xr

    truth = json.loads(xr.open_zarr(store).attrs["true_params"])
    for k, v in truth.items():
        assert abs(got["params"][k] - v) < 4 * got["bse"][k], k


def pd_series(d):
    import pandas as pd

    return pd.Series(d)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "/nonexistent/panel.zarr", "--y", "y"], "does not exist"),
        (["simulate", "/tmp/never.zarr", "--dims", "i=3,j"], "'j' is not NAME=POSITIVE_INTEGER"),
        (["simulate", "/tmp/never.zarr", "--dims", "i=3", "--block", "x=q"], "'q' is not one of the --dims"),
        (["simulate", "/tmp/never.zarr", "--dims", "i=3", "--family", "tweedie"], "family='tweedie'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_variable_exits_2(store, capsys):
    assert main(["fit", str(store), "--y", "flow"]) == 2
    assert "'flow' is not in the dataset" in capsys.readouterr().err


def test_refuses_to_overwrite_without_flag(store, capsys):
    assert main(["simulate", str(store), "--dims", "i=3"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_console_script_is_installed(store):
    exe = Path(sys.executable).parent / "daskglm"
    out = subprocess.run([str(exe), "info", str(store)], capture_output=True, text=True, check=True)
    assert "x_ijk_1" in out.stdout
