"""Fixed effects (fe=) against independent references.

* pyfixest (``fepois``, ``feols``, ``feglm`` logit) on the long table of the same panels:
  coefficients, standard errors (iid, HC1, one-way and two-way clusters, its default small-sample
  corrections) and the number of observations after its singleton and separation drops;
* statsmodels with dummy columns for every family (NB2 and the exponential model included):
  coefficients and the fitted linear predictor (which does not depend on how the effects are
  normalised);
* real data: plm's Grunfeld (statsmodels' copy) and fixest's ``trade`` gravity panel
  (``../shared/data/fixest-trade``), with fixest's published estimate.
"""

from __future__ import annotations

import itertools
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import xarray as xr
from helpers import TRADE
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg

import daskglm as dg
from daskglm.frontend.fixed_effects import AbsorbedWarning
from daskglm.kernels.checks import DataError

pf = pytest.importorskip("pyfixest")

SHAPES = {
    2: ({"i": 40, "j": 30}, [("i",), ("j",)]),
    3: ({"i": 14, "j": 12, "k": 6}, [("i", "k"), ("j", "k")]),
    4: ({"a": 6, "b": 5, "c": 4, "d": 5}, [("a",), ("b",), ("c", "d")]),
}


def make_fe_panel(ndim: int, family: str, seed: int = 0, missing: float = 0.1):
    """A panel with effects, a full-grid covariate, a covariate on the first two dims, an
    offset on the last dim, missing cells; returns (Dataset, long DataFrame, effects)."""
    sizes, effects = SHAPES[ndim]
    rng = np.random.default_rng(seed)
    dims = tuple(sizes)
    shape = tuple(sizes.values())
    coords = {d: [f"{d}{k:02d}" for k in range(n)] for d, n in sizes.items()}
    x1 = rng.normal(size=shape)
    x2 = rng.normal(size=shape[:2])
    off = rng.uniform(-0.2, 0.2, size=shape[-1])
    eta = 0.4 * x1 - 0.3 * x2.reshape(shape[:2] + (1,) * (ndim - 2)) + off
    for eff in effects:
        ax = [dims.index(d) for d in eff]
        a = rng.normal(scale=0.5, size=[shape[k] for k in ax])
        eta = eta + a.reshape([shape[k] if k in ax else 1 for k in range(ndim)])
    if family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    elif family == "negative_binomial":  # gamma-Poisson: NB2 with alpha = 0.5
        y = rng.poisson(np.exp(eta) * rng.gamma(2.0, 0.5, size=shape)).astype(float)
    elif family == "gaussian":
        y = eta + rng.normal(size=shape)
    else:
        y = (rng.random(shape) < 1 / (1 + np.exp(-eta))).astype(float)
    y[rng.random(shape) < missing] = np.nan
    ds = xr.Dataset(
        {
            "y": (dims, y),
            "x1": (dims, x1),
            "x2": (dims[:2], x2),
            "off": ((dims[-1],), off),
            "w": (dims, rng.integers(1, 4, size=shape).astype(float)),
        },
        coords=coords,
    )
    df = ds.to_dataframe().reset_index().dropna(subset=["y"])
    return ds, df, effects


def fml(effects, rhs="x1 + x2"):
    return "y ~ " + rhs + " | " + " + ".join("^".join(e) for e in effects)


def pyfixest_fit(family, df, formula, vcov, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family == "poisson":
            return pf.fepois(formula, data=df, vcov=vcov, iwls_tol=1e-12, **kw)
        if family == "gaussian":
            return pf.feols(formula, data=df, vcov=vcov, **kw)
        # pyfixest's default IRLS tolerance (1e-8 on the deviance) leaves its SEs ~2e-5 off
        return pf.feglm(formula, data=df, vcov=vcov, family="logit", iwls_tol=1e-12, **kw)


VCOVS = [
    ("nonrobust", None, "iid"),
    ("HC1", None, "hetero"),
    ("cluster", "first", "first"),
    ("cluster", "twoway", "twoway"),
]


def _cluster_args(kind, dims):
    if kind == "first":
        return dims[0], {"CRV1": dims[0]}
    return [dims[0], dims[1]], {"CRV1": f"{dims[0]}+{dims[1]}"}


@pytest.mark.parametrize("ndim", [2, 3, 4])
@pytest.mark.parametrize("family", ["poisson", "gaussian", "binomial"])
def test_against_pyfixest(ndim, family):
    ds, df, effects = make_fe_panel(ndim, family, seed=ndim)
    dims = tuple(ds["y"].dims)
    formula = fml(effects)
    if family == "binomial":
        # fixest's feglm drops the cells of levels with only 0 (or only 1) outcomes, and so does
        # daskglm; pyfixest 0.60's feglm keeps them (no separation check for logit): give it the
        # cells fixest keeps
        kept = dg.fit(ds, "y", ["x1", "x2"], family, fe=effects, cov_type=None).predict(which="linear")
        kept = kept.rename("kept").to_dataframe().reset_index()
        df = df.merge(kept, on=list(dims))
        df = df[np.isfinite(df["kept"])].drop(columns="kept")
    fits = {}
    for cov, kind, _ in VCOVS:
        cluster, vc = (
            _cluster_args(kind, dims) if kind else (None, {"nonrobust": "iid", "HC1": "hetero"}[cov])
        )
        res = dg.fit(ds, "y", ["x1", "x2"], family, fe=effects, cov_type=cov, cluster=cluster, chunks=5)
        ref = pyfixest_fit(family, df, formula, vc)
        np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
        assert res.nobs == ref._N
        fits[cov, kind] = res
    res = fits["nonrobust", None]
    pred = res.predict(which="linear").to_dataframe().reset_index()
    merged = df.merge(pred, on=list(dims))
    assert np.isfinite(merged["predicted_linear"]).sum() == res.nobs
    assert res.passes > 0 and len(res.fixed_effects) == len(effects)


def test_offset_and_weights_against_pyfixest():
    ds, df, effects = make_fe_panel(3, "poisson", seed=11)
    res = dg.fit(ds, "y", ["x1", "x2"], "poisson", fe=effects, offset="off", cov_type="HC1")
    ref = pyfixest_fit("poisson", df, fml(effects), "hetero", offset="off")
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
    ds, df, effects = make_fe_panel(3, "gaussian", seed=12)
    res = dg.fit(ds, "y", ["x1", "x2"], "gaussian", fe=effects, weights="w", cov_type="nonrobust")
    ref = pyfixest_fit("gaussian", df, fml(effects), "iid", weights="w", weights_type="fweights")
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)


def _dummies(df, effects, dims):
    cols = []
    for k, eff in enumerate(effects):
        key = df[list(eff)].astype(str).agg("|".join, axis=1)
        d = pd.get_dummies(key, prefix=f"fe{k}", dtype=float)
        cols.append(d if k == 0 else d.iloc[:, 1:])
    return pd.concat(cols, axis=1)


@pytest.mark.parametrize("family", ["poisson", "gaussian", "binomial", "negative_binomial", "exponential"])
def test_against_statsmodels_dummies(family):
    """Every family, two effects on a 3-D panel, against a dummy-variable fit."""
    base = family if family in ("gaussian", "binomial", "negative_binomial") else "poisson"
    ds, df, effects = make_fe_panel(3, base, seed=5, missing=0.05)
    fam: object = family
    if family == "negative_binomial":
        fam = dg.NegativeBinomial(alpha=None)
    if family == "exponential":
        rng = np.random.default_rng(3)
        T = rng.exponential(1.0, size=ds["y"].shape) + 0.1
        ds["event"] = (ds["y"].dims, (rng.random(T.shape) < 0.7).astype(float))
        ds["y"] = xr.where(np.isfinite(ds["y"]), T, np.nan)
        df = ds.to_dataframe().reset_index().dropna(subset=["y"])
        fam = dg.Exponential(event="event")
    res = dg.fit(ds, "y", ["x1", "x2"], fam, fe=effects, drop_singletons=False)
    # statsmodels needs the same cells: drop the ones daskglm dropped (perfect prediction)
    pred = res.predict(which="linear").to_dataframe().reset_index()
    df = df.merge(pred, on=list(ds["y"].dims))
    df = df[np.isfinite(df["predicted_linear"])]
    X = pd.concat(
        [df[["x1", "x2"]].reset_index(drop=True), _dummies(df, effects, None).reset_index(drop=True)], axis=1
    )
    y = df["y"].to_numpy()
    # keep a full-rank set of the dummy columns (the effects overlap in k)
    _, r, piv = linalg.qr(X.to_numpy(), pivoting=True, mode="economic")
    keep = np.sort(piv[: int((np.abs(np.diag(r)) > 1e-9 * abs(r[0, 0])).sum())])
    assert keep[0] == 0 and keep[1] == 1
    X = X.iloc[:, keep]
    if family == "negative_binomial":
        start = sm.NegativeBinomial(y, X.to_numpy()).fit(disp=0, maxiter=2000, method="bfgs").params
        ref = sm.NegativeBinomial(y, X.to_numpy()).fit(disp=0, method="newton", start_params=start)
        params, fitted = ref.params[:2], X.to_numpy() @ ref.params[:-1]
        assert res.alpha == pytest.approx(ref.params[-1], rel=1e-5)
    else:
        if family == "exponential":
            model = sm.GLM(
                df["event"].to_numpy(), X.to_numpy(), family=sm.families.Poisson(), offset=np.log(y)
            )
        else:
            smfam = {
                "poisson": sm.families.Poisson(),
                "gaussian": sm.families.Gaussian(),
                "binomial": sm.families.Binomial(),
            }
            model = sm.GLM(y, X.to_numpy(), family=smfam[family])
        ref = model.fit(tol=1e-12)
        params, fitted = ref.params[:2], X.to_numpy() @ ref.params
        if family == "exponential":
            fitted = fitted  # the hazard's linear predictor, without log T
    np.testing.assert_allclose(res.params.to_numpy(), params, rtol=1e-6, atol=1e-9)
    # (statsmodels' own convergence leaves its fitted values ~1e-7 off at some cells)
    np.testing.assert_allclose(df["predicted_linear"].to_numpy(), fitted, rtol=1e-5, atol=1e-5)


def test_grunfeld_against_pyfixest():
    """plm's Grunfeld investment panel (firm x year), OLS with firm and year effects."""
    data = sm.datasets.grunfeld.load_pandas().data
    data["year"] = data["year"].astype(int)
    ds = data.set_index(["firm", "year"]).to_xarray()
    res = dg.fit(
        ds,
        "invest",
        ["value", "capital"],
        "gaussian",
        fe=["firm", "year"],
        cov_type="cluster",
        cluster="firm",
    )
    ref = pf.feols("invest ~ value + capital | firm + year", data=data, vcov={"CRV1": "firm"})
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-6)
    assert res.nobs == ref._N == 220


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_trade_gravity_against_fixest_and_pyfixest():
    """fixest's own gravity example on its real 4-D trade panel.

    fixest vignette ("fixest walkthrough"): ``fepois(Euros ~ log(dist_km) | Origin + Destination
    + Product + Year, trade)`` gives log(dist_km) = -1.52787.
    """
    trade = pd.read_csv(TRADE)
    trade["log_dist"] = np.log(trade["dist_km"])
    ds = trade.set_index(["Origin", "Destination", "Product", "Year"])[["Euros"]].to_xarray()
    dist = trade.groupby(["Origin", "Destination"])["log_dist"].first().to_xarray()
    ds["log_dist"] = dist
    fe = ["Origin", "Destination", "Product", "Year"]
    res = dg.fit(ds, "Euros", ["log_dist"], "poisson", fe=fe, cov_type="cluster", cluster="Origin")
    assert res.params["log_dist"] == pytest.approx(-1.52787, abs=5e-6)
    ref = pf.fepois(
        "Euros ~ log_dist | Origin + Destination + Product + Year", data=trade, vcov={"CRV1": "Origin"}
    )
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
    assert res.nobs == ref._N


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
@pytest.mark.parametrize("family", ["poisson", "binomial", "gaussian"])
def test_trade_raw_year_interaction_against_pyfixest(family):
    """``log(dist_km) * Year`` (a raw calendar year, its interaction ~2e3 times the distance)
    beside origin and destination effects on fixest's trade panel: a badly conditioned real
    design where the loose inner solve of an early Newton step gave a direction that did not
    ascend (decrement -7.8e9); Newton took it as converged and returned 439.6 for log(dist_km),
    LL -1.74e12. The direction is now solved again to the full inner tolerance when it does not
    ascend, and a negative decrement never stops the fit. Reference: pyfixest (Poisson 7.795168,
    0.066115, -0.004629 at LL -1.211871e12, as statsmodels with dummies gives). OLS of
    log(Euros): the concentrated information's condition number is 9e5, and the loose inner
    solve of what would be the last step understated the decrement left, so Newton stopped 4e-7
    from pyfixest and statsmodels (which agree to 2e-10); that step is now solved tightly."""
    trade = pd.read_csv(TRADE)
    dims = ["Origin", "Destination", "Product", "Year"]
    fml = "Euros ~ log(dist_km) * Year | Origin + Destination"
    if family == "binomial":
        trade["big"] = (trade["Euros"] > trade["Euros"].median()).astype(float)
        fml = fml.replace("Euros ~", "big ~")
        ref = pf.feglm(fml, data=trade, family="logit")
        rtol = 1e-6  # pyfixest's feglm at its default tolerance (it has no iwls_tol)
    elif family == "gaussian":
        trade = trade[trade["Euros"] > 0]
        fml = fml.replace("Euros ~", "log(Euros) ~")
        ref = pf.feols(fml, data=trade)
        rtol = 1e-8
    else:
        ref = pf.fepois(fml, data=trade, iwls_tol=1e-12)
        rtol = 1e-8
    res = dg.fit(trade, fml, family=family, dims=dims)
    assert res.converged, res.message
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=rtol)
    assert all(r["decrement"] > 0 for r in res.history.to_dict("records")[1:])


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_failed_newton_says_what_to_try():
    """NB2 with ``log(dist_km) * Year`` beside ``Origin^Product + Destination`` (counts of 1e5
    Euros): Newton's concentrated information is badly conditioned and indefinite there, and
    its step halving fails. The fit must not claim convergence, and the warning says what to
    try; L-BFGS, which it names, converges to a higher log-likelihood."""
    trade = pd.read_csv(TRADE)
    trade["cnt"] = np.round(trade["Euros"] / 1e5)
    dims = ["Origin", "Destination", "Product", "Year"]
    fml = "cnt ~ log(dist_km) * Year | Origin^Product + Destination"
    with pytest.warns(dg.ConvergenceWarning, match="centre such covariates, or try solver='lbfgs'"):
        res = dg.fit(trade, fml, family=dg.NegativeBinomial(), dims=dims, cov_type=None)
    assert not res.converged
    alt = dg.fit(trade, fml, family=dg.NegativeBinomial(), dims=dims, cov_type=None, solver="lbfgs")
    assert alt.converged and alt.llf > res.llf


def test_bad_effects():
    ds, _, effects = make_fe_panel(3, "poisson")
    with pytest.raises(ValueError, match="not a panel dim"):
        dg.fit(ds, "y", ["x1"], "poisson", fe=["nope"])
    with pytest.raises(ValueError, match="saturated"):
        dg.fit(ds, "y", ["x1"], "poisson", fe=[("i", "j", "k")])
    with pytest.raises(ValueError, match="solver='newton'"):
        dg.fit(ds, "y", ["x1"], "poisson", fe=effects, solver="newton_schulz")
    with pytest.raises(ValueError, match="qr='always' .* not available with fe="):
        dg.fit(ds, "y", ["x1"], "poisson", fe=effects, qr="always")
    # a covariate on (i, k) beside an (i, k) effect is absorbed: dropped with a warning
    ds["x_ik"] = (("i", "k"), np.random.default_rng(0).normal(size=(14, 6)))
    with pytest.warns(AbsorbedWarning, match="x_ik"):
        res = dg.fit(ds, "y", ["x1", "x_ik"], "poisson", fe=effects)
    assert list(res.params.index) == ["x1"] and res.absorbed == ["x_ik"]
    # every level predicts its cells perfectly: nothing left
    ds["zero"] = xr.zeros_like(ds["y"])
    with pytest.raises(DataError, match="every level"):
        dg.fit(ds, "zero", ["x1"], "poisson", fe=effects)


def test_perfect_prediction_drops_match_pyfixest():
    ds, df, effects = make_fe_panel(2, "poisson", seed=3)
    ds["y"][0, :] = 0.0  # level i00: all zero counts
    ds["y"][1, 2:] = np.nan  # level i01: a couple of cells
    df = ds.to_dataframe().reset_index().dropna(subset=["y"])
    res = dg.fit(ds, "y", ["x1", "x2"], "poisson", fe=effects)
    ref = pyfixest_fit("poisson", df, fml(effects), "iid")
    assert res.nobs == ref._N
    assert res.n_dropped == len(df) - ref._N and res.levels_dropped["i"] >= 1
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    assert np.isnan(res.fixed_effects["i"].sel(i="i00"))
    assert "Dropped cells" in res.summary()


def test_cli_fe_matches_api(tmp_path):
    """``daskglm fit --fe`` gives the API's estimates (two-way clusters by fixest's string)."""
    import json
    import subprocess
    import sys

    ds, _, effects = make_fe_panel(3, "poisson", seed=7, missing=0.0)
    store = str(tmp_path / "p.zarr")
    ds[["y", "x1", "x2"]].to_zarr(store, mode="w")
    out = str(tmp_path / "r.json")
    cmd = [
        sys.executable,
        "-m",
        "daskglm.api.cli",
        "fit",
        store,
        "--y",
        "y",
        "--x",
        "x1,x2",
        "--family",
        "poisson",
    ]
    cmd += ["--fe", "i^k,j^k", "--cov-type", "cluster", "--cluster", "i+j", "--no-progress", "--out", out]
    subprocess.run(cmd, check=True, capture_output=True)
    got = json.load(open(out))
    res = dg.fit(ds, "y", ["x1", "x2"], "poisson", fe=effects, cov_type="cluster", cluster=["i", "j"])
    np.testing.assert_allclose(list(got["params"].values()), res.params.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(list(got["bse"].values()), res.bse.to_numpy(), rtol=1e-6)
    assert got["diagnostics"]["fixed_effects"] == {"i^k": 84, "j^k": 72}


@pytest.mark.slow
def test_fixed_effects_on_a_distributed_cluster(tmp_path):
    """A zarr store fitted by two worker processes (W persisted on the workers, inner products
    as dask passes) equals the threaded in-process fit."""
    from distributed import Client, LocalCluster

    ds, _, effects = make_fe_panel(3, "poisson", seed=9, missing=0.0)
    store = str(tmp_path / "p.zarr")
    ds[["y", "x1", "x2"]].chunk({"i": 7, "j": 6}).to_zarr(store, mode="w")
    kw = dict(fe=effects, cov_type="cluster", cluster="i + j", progress=False)
    ref = dg.fit(store, "y", ["x1", "x2"], "poisson", **kw)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        res = dg.fit(store, "y", ["x1", "x2"], "poisson", client=client, **kw)
    assert res.persisted
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse.to_numpy(), rtol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("tree", [True, False])
def test_cluster_passes_equal_in_process_on_uneven_chunks(monkeypatch, tree):
    """On a LocalCluster the fixed-effects passes equal the in-process passes on the same
    uneven chunks to 1e-10 (``tree``: level arrays sent once, cut on the workers, results added
    on the workers by a tree of boxes; else pieces cut and added on the client): counts, an
    evaluation with the Hessian, the product with the effects' block (against an independent
    dense ``D' diag(W) D V`` too) and the cluster scores."""
    import dask.array as da
    from distributed import Client, LocalCluster

    from daskglm.graph import effects as effects_module
    from daskglm.graph.effects import FixedEffectPasses

    monkeypatch.setattr(effects_module, "TREE_MIN_BYTES", 0 if tree else float("inf"))
    from daskglm.graph.passes import PassCounter
    from daskglm.kernels.effects import Effect
    from daskglm.kernels.layout import ArgSpec, Block, Layout
    from daskglm.runtime.scheduling import compute_target

    rng = np.random.default_rng(17)
    shape, chunks = (12, 13, 5), ((5, 4, 3), (7, 6), (3, 2))
    x = rng.standard_normal((2,) + shape)
    y = rng.poisson(np.exp(0.3 * x[0] - 0.2 * x[1] + rng.normal(scale=0.5, size=shape))).astype(float)
    args = (ArgSpec("y", "y", (0, 1, 2)), ArgSpec("x1", "x", (0, 1, 2)), ArgSpec("x2", "x", (0, 1, 2)))
    blocks = (Block((0, 1, 2), ("x1", "x2"), (1, 2)),)
    layout = Layout(("i", "j", "t"), args, blocks, dg.Poisson(), "raise")
    axes = [(0, 2), (1, 2), (0, 1)]
    effects = [Effect(tuple("ijt"[a] for a in ax), ax, tuple(shape[a] for a in ax)) for ax in axes]
    levels = [rng.normal(scale=0.3, size=e.shape) for e in effects]
    V = [rng.normal(size=e.shape + (3,)) for e in effects]
    proj = [rng.normal(size=e.shape + (2,)) for e in effects]
    params = np.array([0.25, -0.15])
    keeps = [(0,), (0, 1)]

    def passes():
        arrays = [da.from_array(a, chunks=chunks) for a in (y, x[0], x[1])]
        fe = FixedEffectPasses(layout, arrays, chunks, effects, PassCounter())
        ev = fe.evaluate(params, levels, hessian=True)
        return fe.counts(levels), ev, fe.product(V), fe.scores(params, levels, proj, keeps)

    ref = passes()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        compute_target(client),
    ):
        got = passes()

    def close(a, b):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-10, atol=1e-12)

    for a, b in zip(ref[0], got[0], strict=True):
        assert a.shape == b.shape
        close(a, b)
    assert set(got[1]) == set(ref[1]) >= {"ll", "grad", "hess", "grad_fe", "diag_fe", "cross_fe"}
    for k, v in ref[1].items():
        pairs = zip(v, got[1][k], strict=True) if isinstance(v, list) else [(v, got[1][k])]
        for a, b in pairs:
            close(a, b)
    for a, b in zip(ref[2], got[2], strict=True):
        close(a, b)
    close(ref[3]["meat"], got[3]["meat"])
    for (S0, n0), (S1, n1) in zip(ref[3]["clusters"], got[3]["clusters"], strict=True):
        close(S0, S1)
        close(n0, n1)

    # the product against dense dummies: A V = D' diag(-w h) D V with h = exp(eta) for Poisson
    eta = 0.25 * x[0] - 0.15 * x[1]
    for e, lv in zip(effects, levels, strict=True):
        eta = eta + np.expand_dims(lv, tuple(a for a in range(3) if a not in e.axes))
    W = np.exp(eta)
    for e, out in zip(effects, got[2], strict=True):
        dense = np.zeros(e.shape + (3,))
        for f, v in zip(effects, V, strict=True):
            spread = np.expand_dims(v, tuple(a for a in range(3) if a not in f.axes))
            cells = np.broadcast_to(spread, shape + (3,)) * W[..., None]
            dense += cells.sum(axis=tuple(a for a in range(3) if a not in e.axes))
        close(out, np.sign(np.sum(out * dense)) * dense)


@pytest.mark.slow
def test_cluster_product_raises_when_the_workers_are_gone(monkeypatch):
    """The fixed-effects passes on a cluster stay under the watchdog: a product (by the tree
    of :func:`~daskglm.graph.effects.FixedEffectPasses._run_cluster`) after the only worker
    (holding ``W``) has left raises :class:`~daskglm.ClusterLostError` within
    ``daskglm.no-workers-timeout``, not a hang."""
    from daskglm.graph import effects as effects_module

    monkeypatch.setattr(effects_module, "TREE_MIN_BYTES", 0)
    import time

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster

    from daskglm.graph.effects import FixedEffectPasses
    from daskglm.graph.passes import PassCounter
    from daskglm.kernels.effects import Effect
    from daskglm.kernels.layout import ArgSpec, Block, Layout
    from daskglm.runtime.scheduling import compute_target

    rng = np.random.default_rng(5)
    shape, chunks = (8, 9), ((5, 3), (4, 5))
    x = rng.standard_normal(shape)
    y = rng.poisson(np.exp(0.2 * x)).astype(float)
    args = (ArgSpec("y", "y", (0, 1)), ArgSpec("x", "x", (0, 1)))
    layout = Layout(("i", "j"), args, (Block((0, 1), ("x",), (1,)),), dg.Poisson(), "raise")
    effects = [Effect(("i",), (0,), (8,)), Effect(("j",), (1,), (9,))]
    levels = [np.zeros(e.shape) for e in effects]
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        dask.config.set({"daskglm.no-workers-timeout": "2s"}),
        compute_target(client),
    ):
        arrays = [da.from_array(a, chunks=chunks) for a in (y, x)]
        fe = FixedEffectPasses(layout, arrays, chunks, effects, PassCounter())
        fe.evaluate(np.array([0.2]), levels, hessian=True)
        assert fe.product([np.ones(e.shape + (1,)) for e in effects])[0].shape == (8, 1)
        cluster.scale(0)
        deadline = time.monotonic() + 30
        while client.scheduler_info()["workers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        with pytest.raises(dg.ClusterLostError, match="no workers"):
            fe.product([np.ones(e.shape + (1,)) for e in effects])
        assert time.monotonic() - t0 < 15


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_compiled_product_equals_numpy(data):
    """The numba product with the effects' block equals the numpy reference (1e-12), for any
    number of dims, effects on any proper subsets (and the empty one), zero weights."""
    from daskglm.kernels.effects import Effect, fe_matvec_chunk

    ndim = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    subsets = [s for r in range(ndim) for s in itertools.combinations(range(ndim), r)]
    chosen = data.draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=4, unique=True))
    effects = [Effect(tuple(f"d{a}" for a in ax), ax, tuple(shape[a] for a in ax)) for ax in chosen]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    W = rng.random(shape) * (rng.random(shape) > 0.3)
    k = data.draw(st.integers(1, 4))
    V = [rng.normal(size=e.shape + (k,)) for e in effects]
    ref = fe_matvec_chunk(effects, W, *V, engine="numpy")
    got = fe_matvec_chunk(effects, W, *V, engine="numba")
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["poisson", "negative_binomial"])
def test_slabs_equal_whole_chunks(monkeypatch, family):
    """Chunks processed in slabs along their first axis (levels, W, cluster scores and drop
    counts assembled from the slabs) give the whole-chunk results."""
    import daskglm.kernels.effects as effects_module

    base = "negative_binomial" if family == "negative_binomial" else "poisson"
    ds, _, effects = make_fe_panel(3, base, seed=21)
    ds["y"][0, :, :] = 0.0  # a dropped level (all zero counts)
    # (for NB2 without the pair effect, which would absorb the overdispersion: alpha interior)
    fe = effects + [("i", "j")] if family == "poisson" else effects
    kw = dict(fe=fe, cov_type="cluster", cluster="i + k", chunks=(7, 12, 6))
    fam = dg.NegativeBinomial(alpha=None) if family == "negative_binomial" else family
    whole = dg.fit(ds, "y", ["x1", "x2"], fam, **kw)
    monkeypatch.setattr(effects_module, "SLAB_CELLS", 20)
    slabs = dg.fit(ds, "y", ["x1", "x2"], fam, **kw)
    assert slabs.nobs == whole.nobs and slabs.n_dropped == whole.n_dropped > 0
    np.testing.assert_allclose(slabs.params.to_numpy(), whole.params.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(slabs.bse.to_numpy(), whole.bse.to_numpy(), rtol=1e-7)
    assert slabs.llf == pytest.approx(whole.llf, rel=1e-12)


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_barely_varying_covariate_beside_effects():
    """log(Year) varies by 0.2% around 7.6: its concentrated information is a tiny difference
    of large numbers, which an inexact inner solve used to swamp (Newton stalled at 100
    iterations, 47.06 instead of pyfixest's 72.644)."""
    trade = pd.read_csv(TRADE)
    trade["log_dist"] = np.log(trade["dist_km"])
    trade["log_year"] = np.log(trade["Year"].astype(float))
    ds = trade.set_index(["Origin", "Destination", "Product", "Year"])[["Euros"]].to_xarray()
    ds["log_dist"] = trade.groupby(["Origin", "Destination"])["log_dist"].first().to_xarray()
    ds["log_year"] = np.log(ds["Year"].astype(float))
    fe = [("Origin", "Product"), "Destination"]
    res = dg.fit(ds, "Euros", ["log_dist", "log_year"], "poisson", fe=fe, cov_type="nonrobust")
    ref = pf.fepois(
        "Euros ~ log_dist + log_year | Origin^Product + Destination", data=trade, vcov="iid", iwls_tol=1e-12
    )
    assert res.converged
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_levels_do_not_drift_apart_along_the_shared_constant():
    """``Euros ~ log_dist | Origin^Product + Destination``: near the optimum the effects'
    gradient is all rounding, and its rounding has a component along the constant the two
    effects can trade; CG drifted along it (levels at -2.95e10 and +2.95e10, eta without
    digits) and Newton never met its stopping rule (100 iterations, not converged)."""
    trade = pd.read_csv(TRADE)
    trade["log_dist"] = np.log(trade["dist_km"])
    ds = trade.set_index(["Origin", "Destination", "Product", "Year"])[["Euros"]].to_xarray()
    ds["log_dist"] = trade.groupby(["Origin", "Destination"])["log_dist"].first().to_xarray()
    fe = [("Origin", "Product"), "Destination"]
    res = dg.fit(ds, "Euros", ["log_dist"], "poisson", fe=fe, cov_type="nonrobust")
    ref = pf.fepois("Euros ~ log_dist | Origin^Product + Destination", data=trade, vcov="iid", iwls_tol=1e-12)
    assert res.converged and res.n_iter < 30
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
    levels = np.concatenate([np.ravel(a.to_numpy()) for a in res.fixed_effects.values()])
    assert np.nanmax(np.abs(levels)) < 100


@pytest.mark.parametrize("family", ["poisson", "gaussian", "binomial", "negative_binomial"])
def test_llnull_is_the_constant_only_model_on_the_same_cells(family):
    """``llnull`` (and the pseudo R2 of etable) against statsmodels' constant-only fit of the
    cells the effects' drops leave (Poisson with its offset; NB2 with alpha estimated)."""
    ds, df, effects = make_fe_panel(3, family, seed=4)
    fam = dg.NegativeBinomial(alpha=None) if family == "negative_binomial" else family
    offset = "off" if family == "poisson" else None
    res = dg.fit(ds, "y", ["x1", "x2"], fam, fe=effects, offset=offset)
    kept = res.predict(which="linear").rename("kept").to_dataframe().reset_index()
    df = df.merge(kept, on=list(ds["y"].dims))
    df = df[np.isfinite(df["kept"])]
    ones = np.ones((len(df), 1))
    if family == "negative_binomial":
        ref = sm.NegativeBinomial(df["y"].to_numpy(), ones).fit(disp=0)
    else:
        smfam = {"poisson": sm.families.Poisson(), "gaussian": sm.families.Gaussian()}
        model = sm.GLM(
            df["y"].to_numpy(),
            ones,
            family=smfam.get(family, sm.families.Binomial()),
            offset=df["off"].to_numpy() if offset else None,
        )
        ref = model.fit()
    assert res.llnull == pytest.approx(ref.llf, rel=1e-9)
    assert res.pseudo_rsquared == pytest.approx(1 - res.llf / ref.llf, rel=1e-8)
