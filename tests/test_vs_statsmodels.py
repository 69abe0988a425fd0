"""Every family x panel shape (1-D to 4-D) x options against statsmodels on the expanded design.

Tolerances (the issue's): params 1e-6 relative, standard errors 1e-5 relative, log-likelihood
1e-8 relative. Options rotate over the shapes so that each is exercised with several families:
offsets, exposure, frequency weights, trials, feature dims, missing cells, chunks cutting every
dim; float32 zarr stores have their own test below.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import DIM_SETS, expand, make_panel, statsmodels_fit
from scipy import stats

import daskglm as dg

FAMILIES = ["gaussian", "poisson", "binomial", "negative_binomial", "nb_fixed", "exponential"]
NB_ALPHA = 0.7


def dg_family(name: str):
    return {
        "gaussian": dg.Gaussian(),
        "poisson": dg.Poisson(),
        "binomial": dg.Binomial(trials="trials"),
        "negative_binomial": dg.NegativeBinomial(),
        "nb_fixed": dg.NegativeBinomial(alpha=NB_ALPHA),
        "exponential": dg.Exponential(event="event"),
    }[name]


def options(ndim: int, family: str) -> dict:
    log_link = family in ("poisson", "negative_binomial", "nb_fixed")
    return {
        "offset": ndim in (1, 2, 4),
        "exposure": log_link and ndim in (1, 3, 4),
        "weights": ndim in (2, 4),
        "missing": 0.1 if ndim in (3, 4) else 0.0,
    }


def assert_close(a, b, rtol, what):
    a, b = np.asarray(a, float), np.asarray(b, float)
    err = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))
    assert err <= rtol, f"{what}: max relative difference {err:.3g} > {rtol:g}"


def reference_and_fit(family: str, ndim: int, cov_type="nonrobust", cluster=None, seed=1):
    opts = options(ndim, family)
    ds, x = make_panel(ndim, family, seed=seed, **opts)
    chunks = tuple(3 if n > 3 else 2 for n in DIM_SETS[ndim].values())
    res = dg.fit(
        ds,
        "y",
        x,
        dg_family(family),
        offset="off" if opts["offset"] else None,
        exposure="expo" if opts["exposure"] else None,
        weights="w" if opts["weights"] else None,
        chunks=chunks,
        cov_type=cov_type,
        cluster=cluster,
    )
    extra = [v for v in ("off", "expo", "w", "trials", "event") if v in ds]
    df = expand(ds, x, extra)
    xcols = [c for c in res.param_names if c != "Intercept"]
    ref = statsmodels_fit(
        family,
        df,
        xcols,
        offset="off" if opts["offset"] else None,
        exposure="expo" if opts["exposure"] else None,
        weights="w" if opts["weights"] else None,
        trials="trials",
        event="event",
        alpha=NB_ALPHA,
    )
    return ds, df, res, ref, opts


@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_estimates_match_statsmodels(family, ndim):
    ds, df, res, ref, opts = reference_and_fit(family, ndim)
    assert res.converged
    names = res.param_names
    ref_params = ref.params.iloc[: len(names)].to_numpy()
    ref_bse = ref.bse.iloc[: len(names)].to_numpy()
    assert list(ref.params.index[: len(names)]) == names
    assert_close(res.params.to_numpy(), ref_params, 1e-6, "params")
    assert_close(res.bse.to_numpy(), ref_bse, 1e-5, "bse")
    if family == "exponential":
        # survreg's log-likelihood, computed independently with scipy at the reference estimates
        used = df[np.isfinite(df["y"])]
        if opts["weights"]:
            used = used.loc[used.index.repeat(used["w"].astype(int))]
        lam = ref.fittedvalues.to_numpy() / used["y"].to_numpy()  # mu T / T
        d, t = used["event"].to_numpy(), used["y"].to_numpy()
        ll = np.sum(d * stats.expon.logpdf(t, scale=1 / lam) + (1 - d) * stats.expon.logsf(t, scale=1 / lam))
        assert_close(res.llf, ll, 1e-8, "llf")
    else:
        assert_close(res.llf, ref.llf, 1e-8, "llf")
    if family == "negative_binomial":
        assert_close(res.alpha, ref.params["alpha"], 1e-6, "alpha")
        assert_close(res.alpha_bse, ref.bse["alpha"], 1e-5, "alpha_bse")
    else:
        assert_close(res.deviance, ref.deviance, 1e-8, "deviance")
        assert res.sum_weights == pytest.approx(ref.nobs)
        assert res.df_resid == pytest.approx(ref.df_resid)
    if family not in ("negative_binomial", "exponential"):
        assert_close(res.aic, ref.aic, 1e-8, "aic")
        assert_close(res.bic, ref.bic_llf, 1e-8, "bic")
    lo, hi = res.conf_int().to_numpy().T
    ref_ci = np.asarray(ref.conf_int())[: len(names)]
    assert_close(lo, ref_ci[:, 0], 1e-5, "conf_int lower")
    assert_close(hi, ref_ci[:, 1], 1e-5, "conf_int upper")
    assert_close(res.pvalues.to_numpy(), ref.pvalues.iloc[: len(names)].to_numpy(), 1e-4, "pvalues")


@pytest.mark.parametrize("family", ["gaussian", "poisson", "binomial", "nb_fixed"])
def test_null_model_matches_statsmodels(family):
    """llnull / null_deviance: the intercept-only model with the same offsets and weights."""
    ds, df, res, ref, opts = reference_and_fit(family, 2)
    null = pytest.importorskip("helpers").statsmodels_fit(
        family,
        df,
        [],
        offset="off" if opts["offset"] else None,
        exposure="expo" if opts["exposure"] else None,
        weights="w" if opts["weights"] else None,
        trials="trials",
        alpha=NB_ALPHA,
    )
    assert_close(res.llnull, null.llf, 1e-8, "llnull")
    assert_close(res.null_deviance, null.deviance, 1e-8, "null_deviance")


@pytest.mark.parametrize("cov_type", ["HC0", "HC1", "robust"])
@pytest.mark.parametrize("family", ["gaussian", "poisson", "binomial"])
def test_robust_matches_statsmodels(family, cov_type):
    ds, x = make_panel(3, family, seed=3)
    res = dg.fit(ds, "y", x, dg_family(family), cov_type=cov_type, chunks=(3, 4, 3))
    df = expand(ds, x, [v for v in ("trials",) if v in ds])
    ref_nr = statsmodels_fit(family, df, [c for c in res.param_names if c != "Intercept"], trials="trials")
    # statsmodels' GLM computes HC0 for every "HCx" (cov_white_simple, use_correction=False);
    # HC1 is MacKinnon-White's n / (n - k) times HC0
    ref = ref_nr.model.fit(tol=1e-13, cov_type="HC0")
    factor = ref.nobs / (ref.nobs - len(ref.params)) if cov_type == "HC1" else 1.0
    assert_close(res.params.to_numpy(), ref.params.to_numpy(), 1e-6, "params")
    assert_close(res.bse.to_numpy(), ref.bse.to_numpy() * np.sqrt(factor), 1e-5, f"{cov_type} bse")


@pytest.mark.parametrize("cluster", [("i",), ("i", "j"), ("j", "k")])
@pytest.mark.parametrize("family", ["gaussian", "poisson", "binomial"])
def test_cluster_robust_matches_statsmodels(family, cluster):
    ds, x = make_panel(3, family, seed=4, missing=0.05)
    res = dg.fit(ds, "y", x, dg_family(family), cov_type="cluster", cluster=cluster, chunks=(3, 4, 3))
    df = expand(ds, x, [v for v in ("trials",) if v in ds])
    grid = ds["y"].to_dataframe().reset_index()
    df["group"] = grid.groupby(list(cluster)).ngroup().to_numpy()
    used = df[np.isfinite(df["y"])]
    ref_nr = statsmodels_fit(family, df, [c for c in res.param_names if c != "Intercept"], trials="trials")
    ref = ref_nr.model.fit(tol=1e-13, cov_type="cluster", cov_kwds={"groups": used["group"].to_numpy()})
    assert res.n_clusters == used["group"].nunique()
    assert_close(res.bse.to_numpy(), ref.bse.to_numpy(), 1e-5, "cluster bse")


def test_nb2_cluster_includes_alpha():
    """NB2 with alpha estimated: cluster-robust over (beta, log alpha) vs statsmodels."""
    ds, x = make_panel(2, "negative_binomial", seed=5)
    res = dg.fit(ds, "y", x, "negative_binomial", cov_type="cluster", cluster="i", chunks=(4, 4))
    df = expand(ds, x)
    df["group"] = ds["y"].to_dataframe().reset_index()["i"].to_numpy()
    ref0 = statsmodels_fit("negative_binomial", df, [c for c in res.param_names if c != "Intercept"])
    ref = ref0.model.fit(
        start_params=ref0.params,
        method="newton",
        disp=0,
        cov_type="cluster",
        cov_kwds={"groups": df["group"].to_numpy()},
    )
    k = len(res.param_names)
    assert_close(res.bse.to_numpy(), ref.bse.to_numpy()[:k], 1e-5, "cluster bse")
    assert_close(res.alpha_bse, ref.bse["alpha"], 1e-5, "alpha cluster bse")


def test_float32_zarr_store(tmp_path):
    """A float32 zarr store on disk, read lazily; accumulation is in float64."""
    ds, x = make_panel(3, "poisson", seed=6, exposure=True, missing=0.1)
    ds32 = ds.astype("float32")
    path = tmp_path / "panel.zarr"
    ds32.chunk({"i": 3, "j": 4, "k": 3}).to_zarr(path, mode="w")
    res = dg.fit(str(path), "y", x, "poisson", exposure="expo")
    df = expand(ds32.astype("float64"), x, ["expo"])
    ref = statsmodels_fit("poisson", df, [c for c in res.param_names if c != "Intercept"], exposure="expo")
    assert_close(res.params.to_numpy(), ref.params.to_numpy(), 1e-6, "params")
    assert_close(res.bse.to_numpy(), ref.bse.to_numpy(), 1e-5, "bse")
    assert_close(res.llf, ref.llf, 1e-8, "llf")


def test_missing_drop_matches_dropping_rows():
    """missing='drop' leaves out exactly the cells with a non-finite input, and says how many."""
    ds, x = make_panel(2, "poisson", seed=7)
    ds["x_full"][0, :3] = np.nan
    ds["x_i"][2] = np.inf
    with pytest.raises(dg.DataError, match="x_full.*3 used cell"):
        dg.fit(ds, "y", x, "poisson")
    res = dg.fit(ds, "y", x, "poisson", missing="drop")
    assert res.n_dropped == 3 + ds.sizes["j"]
    assert res.dropped_by == {"x_full": 3, "x_i": ds.sizes["j"]}
    df = expand(ds, x)
    df = df[np.isfinite(df.drop(columns="y")).all(axis=1)]
    ref = statsmodels_fit("poisson", df, [c for c in res.param_names if c != "Intercept"])
    assert_close(res.params.to_numpy(), ref.params.to_numpy(), 1e-6, "params")
    assert res.nobs == ref.nobs


def test_prediction_matches_statsmodels():
    ds, df, res, ref, opts = reference_and_fit("poisson", 3)
    pred = res.predict().values.ravel()
    used = np.isfinite(df["y"]).to_numpy()
    assert_close(pred[used], ref.fittedvalues.to_numpy(), 1e-6, "predicted mean")
    lin = res.predict(which="linear").values.ravel()
    assert_close(np.exp(lin[used]), ref.fittedvalues.to_numpy(), 1e-6, "linear predictor")
    # new data: the same covariates give the same predictions
    new = ds.drop_vars("y")
    assert_close(res.predict(new).values, res.predict().values, 1e-12, "predict on new data")
