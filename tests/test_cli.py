"""The ``daskglm`` command line: simulate -> info -> fit, against the Python API and the truth."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import daskglm as dg
from daskglm.api.cli import main


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


# ---------------------------------------------------------------- families and solvers via the registry


@pytest.fixture(scope="module")
def family_stores(tmp_path_factory):
    """One small simulated store per family (binomial with a trials variable, exponential with an
    event indicator), written by the CLI itself."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for fam in ("gaussian", "binomial", "negative_binomial", "exponential"):
        path = root / f"{fam}.zarr"
        argv = ["simulate", str(path), "--dims", "i=30,j=20,k=4", "--family", fam, "--seed", "3"]
        argv += ["--block", "x_ijk=i,j,k", "--block", "x_ij=i,j", "--block", "x_k=k"]
        assert main(argv) == 0
        out[fam] = str(path)
    return out


def _cli_json(argv, tmp_path, capsys) -> dict:
    out = tmp_path / "res.json"
    rc = main(argv + ["--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(out.read_text())


X = ["x_ijk_1", "x_ij_1", "x_k_1"]

# (store, CLI --family and its options, the same model through the API)
FAMILY_CASES = [
    ("gaussian", ["--family", "gaussian"], dg.Gaussian()),
    ("gaussian", ["--family", "normal"], dg.Gaussian()),
    ("binomial", ["--family", "binomial", "--trials", "trials"], dg.Binomial(trials="trials")),
    ("binomial", ["--family", "logistic", "--trials", "trials"], dg.Binomial(trials="trials")),
    ("binomial", ["--family", "logit", "--trials", "19"], dg.Binomial(trials=19.0)),
    ("negative_binomial", ["--family", "negative-binomial", "--alpha", "0.5"], dg.NegativeBinomial(0.5)),
    ("negative_binomial", ["--family", "nb2"], dg.NegativeBinomial()),
    ("exponential", ["--family", "exponential", "--event", "event"], dg.Exponential(event="event")),
    ("exponential", ["--family", "exponential"], dg.Exponential()),
]


@pytest.mark.parametrize(
    "store_name, argv, family", FAMILY_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_every_family_option_matches_the_api(store_name, argv, family, family_stores, tmp_path, capsys):
    path = family_stores[store_name]
    got = _cli_json(["fit", path, "--y", "y", "--x", ",".join(X)] + argv, tmp_path, capsys)
    ref = dg.fit(path, "y", X, family)
    assert got["diagnostics"]["family"] == ref.family.name
    assert got["diagnostics"]["family_options"] == {o.name: getattr(family, o.name) for o in family.options}
    assert list(got["params"]) == list(ref.params.index)
    if ref.alpha is None:
        assert got["alpha"] is None
    else:
        assert got["alpha"] == pytest.approx(ref.alpha, rel=1e-10)
    np.testing.assert_allclose(pd_series(got["params"])[ref.params.index], ref.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pd_series(got["bse"])[ref.bse.index], ref.bse, rtol=1e-10)
    assert got["diagnostics"]["llf"] == pytest.approx(ref.llf, rel=1e-12)
    assert got["diagnostics"]["converged"]


def test_fixed_alpha_is_not_estimated(family_stores, tmp_path, capsys):
    """The reported bug: --alpha 0.5 with --family negative-binomial estimated alpha anyway."""
    path = family_stores["negative_binomial"]
    base = ["fit", path, "--y", "y", "--x", ",".join(X), "--family", "negative-binomial"]
    fixed = _cli_json(base + ["--alpha", "0.5"], tmp_path, capsys)
    free = _cli_json(base, tmp_path, capsys)
    assert fixed["alpha"] == 0.5 and fixed["alpha_bse"] is None  # fixed, not estimated
    assert free["alpha_bse"] > 0 and abs(free["alpha"] - 0.5) > 1e-3  # the simulated 0.5, estimated
    assert fixed["diagnostics"]["llf"] < free["diagnostics"]["llf"]  # the estimate fits better


def test_default_covariates_leave_out_the_family_variables(family_stores, tmp_path, capsys):
    """Without --x every other variable is a covariate, except those the family options name."""
    path = family_stores["binomial"]
    got = _cli_json(["fit", path, "--y", "y", "--family", "logistic", "--trials", "trials"], tmp_path, capsys)
    assert "trials" not in got["params"] and "x_ijk_1" in got["params"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--family", "poisson", "--trials", "n"],
            "--trials is not an option of family 'poisson'; it takes no",
        ),
        (
            ["--family", "nb2", "--event", "d"],
            "--event is not an option of family 'negative_binomial'; its options are --alpha",
        ),
        (["--family", "gaussian", "--alpha", "1"], "--alpha is not an option of family 'gaussian'"),
        (["--family", "tweedie"], "family='tweedie' is not known"),
        (["--family", "negative_binomial", "--alpha", "-1"], "alpha must be a positive number"),
        (
            ["--solver", "newton", "--learning-rate", "0.1"],
            "--learning-rate is not an option of solver 'newton'; its options are --max-halvings",
        ),
        (["--solver", "adam", "--memory", "5"], "--memory is not an option of solver 'adam'"),
        (["--solver", "bfgs"], "solver='bfgs' is not known"),
    ],
)
def test_options_the_family_or_solver_does_not_take_are_refused(store, argv, message, capsys):
    assert main(["fit", str(store), "--y", "y", "--no-progress"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _solver_option_cases():
    from daskglm.api.registry import SOLVERS

    value = {int: "7", float: "0.25"}
    for spec in SOLVERS.values():
        for name, opt in spec.options().items():
            text = value.get(opt.parse, "0.25")
            yield spec.name, name, text, opt.parse(text)


@pytest.mark.parametrize("solver, name, text, value", list(_solver_option_cases()))
def test_every_solver_option_reaches_fit(solver, name, text, value, store, monkeypatch, capsys):
    """Each option of each solver's config in the registry is a CLI flag passed on to dg.fit."""
    seen = {}

    def fake_fit(*args, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(dg, "fit", fake_fit)
    flag = "--" + name.replace("_", "-")
    assert main(["fit", str(store), "--y", "y", "--solver", solver, flag, text]) == 2
    assert seen["solver"] == solver and seen[name] == value
    assert "stop here" in capsys.readouterr().err


def test_solver_options_match_the_api(family_stores, tmp_path, capsys):
    path = family_stores["negative_binomial"]
    base = ["fit", path, "--y", "y", "--x", ",".join(X), "--family", "nb2"]
    for argv, kwargs in [
        (["--solver", "newton", "--max-halvings", "3"], {"solver": "newton", "max_halvings": 3}),
        (["--solver", "lbfgs", "--memory", "4"], {"solver": "lbfgs", "memory": 4}),
        (
            ["--solver", "gd", "--armijo", "0.001", "--max-backtracks", "30", "--max-iter", "50"],
            {"solver": "gd", "armijo": 0.001, "max_backtracks": 30, "max_iter": 50},
        ),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.ConvergenceWarning)
            got = _cli_json(base + argv, tmp_path, capsys)
            ref = dg.fit(path, "y", X, "nb2", **kwargs)
        assert got["diagnostics"]["solver"] == kwargs["solver"]
        assert got["diagnostics"]["passes"] == ref.passes and got["diagnostics"]["n_iter"] == ref.n_iter
        np.testing.assert_allclose(pd_series(got["params"])[ref.params.index], ref.params, rtol=1e-10)


def test_help_lists_every_registry_name_and_option(capsys):
    from daskglm.api.registry import FAMILIES, FAMILY_ALIASES, SOLVERS

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    for name in [*FAMILIES, *FAMILY_ALIASES, *SOLVERS]:
        assert name in text, name
    for cls in FAMILIES.values():
        for opt in cls.options:
            assert f"--{opt.name} " in text
    for spec in SOLVERS.values():
        for name in spec.options():
            assert "--" + name.replace("_", "-") in text, name


def test_no_workers_timeout_flag_and_exit_code(store, monkeypatch, capsys):
    import dask

    seen = {}

    def lost(*args, **kwargs):
        seen["timeout"] = dask.config.get("daskglm.no-workers-timeout")
        raise dg.ClusterLostError("the dask cluster at tcp://x:1 has had no workers for 5 s")

    monkeypatch.setattr(dg, "fit", lost)
    assert main(["fit", str(store), "--y", "y", "--no-workers-timeout", "5s"]) == 3
    assert seen["timeout"] == "5s"
    assert "has had no workers" in capsys.readouterr().err


def test_simulate_takes_family_aliases(tmp_path):
    import xarray as xr

    path = tmp_path / "nb.zarr"
    assert main(["simulate", str(path), "--dims", "i=5,j=4", "--family", "NB2", "--block", "x_i=i"]) == 0
    assert xr.open_zarr(path).attrs["family"] == "negative_binomial"
