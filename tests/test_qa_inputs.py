"""QA defects of inputs, the CLI and the README (QA report of 2026-11-24, items 5, 8, 9 and part of 10).

* 5: an infinite ``y`` (inf, -inf) is an error naming ``y`` under both engines (NaN stays
  "missing, left out"); with ``missing="drop"`` the cells are dropped and counted, and
  ``log(Euros)`` with zero flows then matches pyfixest (which drops the -inf rows) on the trade panel.
* 8: ``daskglm fit`` refuses a bad ``--out`` / ``--table`` / ``--plot`` / ``--checkpoint`` (suffix,
  missing folder, a folder, the same file twice) before the fit runs.
* 9: the README's cluster factors: one-way = statsmodels (1e-9), two-way = pyfixest (2e-6).
* 10: ``ssc=False`` without ``fe=`` is refused; a misspelt fit argument suggests the name; CLI
  ``--fe "Origin+Destination"`` equals pyfixest; ``daskglm info`` labels only a known response;
  bad trials are named (Star98, statsmodels); a stray "." in a CSV's numeric column says how to
  read it (then statsmodels' fit); ``log(v)`` of negative values says why it is NaN (with
  ``missing="drop"``: statsmodels on the rows with v > 0).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import TRADE, TRADE_DIMS, needs_trade, quiet_fit

import daskglm as dg
from daskglm.kernels import engines

ENGINES = ["numpy"] + (["numba"] if engines.numba_available() else [])


@pytest.fixture(scope="module")
def trade() -> pd.DataFrame:
    return pd.read_csv(TRADE)


# ----------------------------------------------------------------------------- 5: infinite y
@needs_trade
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_y_is_an_error_naming_y(trade, engine, value):
    df = trade.assign(Euros=trade.Euros.astype(float))
    df.loc[[0, 5], "Euros"] = value
    with pytest.raises(dg.DataError, match=r"response 'Euros' is infinite .* at 2 cell\(s\).*missing='drop'"):
        quiet_fit(df, "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS, engine=engine)


@needs_trade
@pytest.mark.parametrize("engine", ENGINES)
def test_infinite_y_with_zero_weight_is_left_out(trade, engine):
    """A cell with weight 0 is out of the model whatever its y: no error."""
    df = trade.assign(Euros=trade.Euros.astype(float), w=1.0)
    df.loc[0, ["Euros", "w"]] = [np.inf, 0.0]
    res = quiet_fit(df, "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS, weights="w", engine=engine)
    assert res.nobs == len(df) - 1


@needs_trade
@pytest.mark.parametrize("engine", ENGINES)
def test_log_of_zero_flows_dropped_matches_pyfixest(trade, engine):
    """``log(Euros)`` of zero flows is -inf: an error by default (with the hint), dropped and
    counted with ``missing="drop"``; the estimate and nobs then equal pyfixest's, which drops
    those rows itself."""
    pf = pytest.importorskip("pyfixest")
    df = trade.assign(Euros=np.where(trade.Product == 1, 0.0, trade.Euros))
    n_zero = int((df.Euros == 0).sum())
    formula = "log(Euros) ~ log(dist_km) | Origin + Destination"
    with pytest.raises(dg.DataError, match=rf"'log\(Euros\)' is infinite .* at {n_zero} cell.*log of a zero"):
        quiet_fit(df, formula, family="gaussian", dims=TRADE_DIMS, engine=engine)
    res = quiet_fit(df, formula, family="gaussian", dims=TRADE_DIMS, engine=engine, missing="drop")
    ref = pf.feols(formula, data=df[df.Euros > 0], vcov="iid")
    assert res.nobs == ref._N == len(df) - n_zero
    assert res.n_dropped == n_zero and res.dropped_by == {"log(Euros)": n_zero}
    np.testing.assert_allclose(res.params.values, ref.coef().values, rtol=1e-9)
    np.testing.assert_allclose(res.bse.values, ref.se().values, rtol=1e-6)


@needs_trade
def test_nan_y_stays_missing(trade):
    """NaN is "not observed": left out silently, not counted as dropped."""
    df = trade.assign(Euros=trade.Euros.astype(float))
    df.loc[[0, 5, 9], "Euros"] = np.nan
    res = quiet_fit(df, "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS)
    assert res.nobs == len(df) - 3 and res.n_dropped == 0


# ------------------------------------------------------------------- 8: CLI output paths first
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--table", "out.xlsx"], "--table 'out.xlsx': the suffix picks the format"),
        (["--out", "/nonexistent/dir/r.json"], "the folder '/nonexistent/dir' does not exist"),
        (["--plot", "coef.xyz"], "--plot 'coef.xyz': the suffix picks the format"),
        (["--plot", "/nonexistent/dir/coef.png"], "the folder '/nonexistent/dir' does not exist"),
        (["--checkpoint", "/nonexistent/dir/state.json"], "the folder '/nonexistent/dir' does not exist"),
        (["--out", "{tmp}"], "is a folder; give a file name inside it"),
        (["--out", "{tmp}/a.md", "--table", "{tmp}/a.md"], "must name different files"),
    ],
)
def test_cli_refuses_bad_output_paths_before_fitting(flags, message, tmp_path, monkeypatch, capsys):
    import daskglm.api.cli as cli

    def no_fit(*args, **kwargs):
        raise AssertionError("the fit ran before the output paths were checked")

    monkeypatch.setattr(cli, "_run_fit", no_fit)
    flags = [f.format(tmp=tmp_path) for f in flags]
    assert cli.main(["fit", str(tmp_path / "panel.zarr"), "--y", "y", "--x", "x", *flags]) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------- 9 and 10: covariance wording
@needs_trade
def test_cluster_factors_without_fe_match_statsmodels_one_way_and_pyfixest_two_way(trade):
    """README: one-way clusters get statsmodels' G/(G-1)(n-1)/(n-k) (= pyfixest's CRV1); two-way
    clusters pyfixest's (one factor, the smallest G), not statsmodels' per-term factors."""
    pf = pytest.importorskip("pyfixest")
    sm = pytest.importorskip("statsmodels.api")
    X = sm.add_constant(np.log(trade.dist_km))
    glm = sm.GLM(trade.Euros, X, family=sm.families.Poisson())
    one = quiet_fit(
        trade, "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS, cov_type="cluster", cluster="Origin"
    )
    ref = glm.fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(trade.Origin)[0]})
    np.testing.assert_allclose(one.bse.values, ref.bse.values, rtol=1e-9)
    two = quiet_fit(
        trade,
        "Euros ~ log(dist_km)",
        family="poisson",
        dims=TRADE_DIMS,
        cov_type="cluster",
        cluster="Origin + Destination",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref2 = pf.fepois("Euros ~ log(dist_km)", data=trade, vcov={"CRV1": "Origin+Destination"})
    np.testing.assert_allclose(two.bse.values, ref2.se().values, rtol=2e-6)  # pyfixest's own tolerance


@needs_trade
def test_ssc_false_without_fe_is_refused(trade):
    """``ssc=False`` only has a meaning with ``fe=`` (fixest's corrections): without it, it used to
    be ignored silently; now refused, pointing to cov_type='HC0'. With fe= it still applies."""
    with pytest.raises(ValueError, match=r"ssc=False .* is for fixed-effects fits \(fe=\).*cov_type='HC0'"):
        quiet_fit(
            trade,
            "Euros ~ log(dist_km)",
            family="poisson",
            dims=TRADE_DIMS,
            cov_type="cluster",
            cluster="Origin",
            ssc=False,
        )
    kw = {"family": "poisson", "dims": TRADE_DIMS, "cov_type": "cluster", "cluster": "Origin"}
    on, off = (quiet_fit(trade, "Euros ~ log(dist_km) | Destination", ssc=ssc, **kw) for ssc in (True, False))
    assert off.bse.iloc[0] < on.bse.iloc[0]


def _tiny_panel():
    import xarray as xr

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    return xr.Dataset({"y": (("i", "t"), rng.poisson(np.exp(0.3 * x)).astype(float)), "x": (("i", "t"), x)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weigths": "x"}, r"'weigths' \(did you mean 'weights', an argument of fit\?\)"),
        (
            {"max_halving": 3},
            r"'max_halving' \(did you mean 'max_halvings', an option of solver 'newton'\?\)",
        ),
        ({"learning_rate": 0.1}, r"'learning_rate' \(an option of solver 'adam', not of 'newton'\)"),
    ],
)
def test_misspelt_fit_argument_suggests_the_name(kwargs, message):
    with pytest.raises(TypeError, match=message):
        dg.fit(_tiny_panel(), "y", ["x"], "poisson", progress=False, **kwargs)


# ------------------------------------------------------------------------ 10: CLI --fe and info
@pytest.fixture(scope="module")
def trade_store(trade, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("qa") / "trade.zarr")
    table = trade.assign(log_dist=np.log(trade.dist_km)).drop(columns="dist_km")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg.from_long(table, TRADE_DIMS, to=path, y="Euros", progress=False)
    return path


@needs_trade
def test_cli_fe_accepts_fixest_plus(trade, trade_store, tmp_path, capsys):
    """``--fe "Origin+Destination"`` (refused before) is the API's ``fe="Origin + Destination"``:
    pyfixest's estimate and clustered SE."""
    import json

    from daskglm.api.cli import main

    pf = pytest.importorskip("pyfixest")
    out = tmp_path / "r.json"
    argv = ["fit", trade_store, "--y", "Euros", "--x", "log_dist", "--family", "poisson", "--no-progress"]
    argv += ["--fe", "Origin+Destination", "--cov-type", "cluster", "--cluster", "Origin", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    got = json.loads(out.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pf.fepois(
            "Euros ~ log_dist | Origin + Destination",
            data=trade.assign(log_dist=np.log(trade.dist_km)),
            vcov={"CRV1": "Origin"},
            fixef_tol=1e-12,
            iwls_tol=1e-12,
        )  # fmt: skip  (pyfixest's default tolerances leave its SE 4e-5 off)
    np.testing.assert_allclose(got["params"]["log_dist"], ref.coef().iloc[0], rtol=1e-8)
    np.testing.assert_allclose(got["bse"]["log_dist"], ref.se().iloc[0], rtol=1e-6)


@needs_trade
def test_cli_info_labels_only_a_known_response(trade_store, capsys):
    """Without ``--y`` and without a variable ``y``, ``info`` labels no variable "response" (it
    used to label the widest, a guess) and says how to name it; with ``--y`` it labels that one."""
    from daskglm.api.cli import main

    assert main(["info", trade_store]) == 0
    text = capsys.readouterr().out
    assert "response: not known" in text and "--y NAME" in text
    assert not [line for line in text.splitlines() if line.rstrip().endswith("response")]
    assert main(["info", trade_store, "--y", "Euros"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows if r and r[-1] == "response"] == ["Euros"]


# ------------------------------------------------------------------- 10: the binomial's trials
@pytest.fixture(scope="module")
def star98():
    """statsmodels' Star98 (303 school districts): successes NABOVE out of NABOVE + NBELOW."""
    import xarray as xr

    sm = pytest.importorskip("statsmodels.api")
    d = sm.datasets.star98.load_pandas().data
    return xr.Dataset(
        {
            "y": ("obs", d.NABOVE.to_numpy(float)),
            "n": ("obs", (d.NABOVE + d.NBELOW).to_numpy(float)),
            "low_income": ("obs", d.LOWINC.to_numpy(float)),
        }
    )


@pytest.mark.parametrize("trials_value", [-1.0, 0.0])
def test_bad_trials_variable_is_named(star98, trials_value):
    """A negative or zero number of trials is reported as such (it used to be "y exceeds the number
    of trials", about the response)."""
    ds = star98.copy(deep=True)
    ds["n"][[3, 7]] = trials_value
    with pytest.raises(
        dg.DataError, match=r"trials variable 'n' is not a positive whole number at 2 used cell"
    ):
        dg.fit(ds, "y", ["low_income"], dg.Binomial(trials="n"), progress=False)


@pytest.mark.parametrize("trials", [0, -2])
def test_bad_constant_trials_is_named(star98, trials):
    with pytest.raises(dg.DataError, match=rf"trials={trials} is not a positive whole number at 303 used"):
        dg.fit(star98, "y", ["low_income"], dg.Binomial(trials=trials), progress=False)


def test_counts_without_trials_hint_at_trials(star98):
    """Counts of successes fitted with the default trials=1 say how to give the trials, and the
    fit with them equals statsmodels' binomial GLM on (successes, failures)."""
    sm = pytest.importorskip("statsmodels.api")
    with pytest.raises(
        dg.DataError, match=r"exceeds the number of trials .*trials=1.0 at every cell.*--trials n"
    ):
        dg.fit(star98, "y", ["low_income"], "binomial", progress=False)
    res = dg.fit(star98, "y", ["low_income"], dg.Binomial(trials="n"), progress=False)
    y, n = star98.y.to_numpy(), star98.n.to_numpy()
    ref = sm.GLM(
        np.c_[y, n - y], sm.add_constant(star98.low_income.to_numpy()), family=sm.families.Binomial()
    ).fit()
    np.testing.assert_allclose(res.params.values, ref.params, rtol=1e-10)


# -------------------------------------------------------- 10: a stray "." in a numeric CSV column
@needs_trade
def test_stray_dot_in_numeric_csv_column(trade, tmp_path):
    """A '.' (Stata's missing) in the response of a CSV made it a string column, reported as "cannot
    be a covariate ... encode it as dummies". The message now says what to do, and doing it (pandas
    with na_values) gives statsmodels' fit without that row."""
    sm = pytest.importorskip("statsmodels.api")
    table = trade.astype({"Euros": str})
    table.loc[3, "Euros"] = "."
    path = tmp_path / "dot.csv"
    table.to_csv(path, index=False)
    with pytest.raises(
        ValueError, match=r"'Euros' is of type string, not numeric. If it holds numbers.*na_values"
    ):
        quiet_fit(str(path), "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS)
    df = pd.read_csv(path, na_values=["."])
    res = quiet_fit(df, "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS)
    kept = df.dropna(subset=["Euros"])
    ref = sm.GLM(kept.Euros, sm.add_constant(np.log(kept.dist_km)), family=sm.families.Poisson()).fit()
    assert res.nobs == len(trade) - 1
    np.testing.assert_allclose(res.params.values, ref.params.values, rtol=1e-9)


# ---------------------------------------------------------------- 10: log of a negative covariate
@needs_trade
def test_log_of_negative_covariate_says_why(trade):
    """``log(v)`` with v < 0 at some cells: the NaN error says the term is computed and why it can be
    NaN; ``missing="drop"`` then fits the cells with v > 0, as statsmodels on those rows."""
    sm = pytest.importorskip("statsmodels.api")
    df = trade.assign(v=np.where(trade.Product % 2 == 0, 1.0, -1.0) * trade.dist_km)
    with pytest.raises(
        dg.DataError, match=r"'log\(v\)' is NaN or infinite .*computed from the data.*log of a value <= 0"
    ):
        quiet_fit(df, "Euros ~ log(v)", family="poisson", dims=TRADE_DIMS)
    res = quiet_fit(df, "Euros ~ log(v)", family="poisson", dims=TRADE_DIMS, missing="drop")
    kept = df[df.v > 0]
    ref = sm.GLM(kept.Euros, sm.add_constant(np.log(kept.v)), family=sm.families.Poisson()).fit()
    assert res.nobs == len(kept) and res.n_dropped == len(df) - len(kept)
    np.testing.assert_allclose(res.params.values, ref.params.values, rtol=1e-9)


def test_arguments_are_checked_before_the_table_is_read(tmp_path):
    """A misspelt argument, an unknown solver option or a bad cov_type is reported before a long
    table is read (here a path that does not exist: reading it first would raise
    FileNotFoundError instead, after minutes on a real table)."""
    missing = str(tmp_path / "nowhere.parquet")
    with pytest.raises(TypeError, match="did you mean 'weights'"):
        dg.fit(missing, "y ~ x", family="poisson", dims=["i", "j"], weigths="w")
    with pytest.raises(ValueError, match="cov_type"):
        dg.fit(missing, "y ~ x", family="poisson", dims=["i", "j"], cov_type="robustest")
    with pytest.raises(ValueError, match="tol=0 must be > 0"):
        dg.fit(missing, "y ~ x", family="poisson", dims=["i", "j"], tol=0)
