"""Fixed effects (fe=) with the gradient solvers: every effect level a parameter.

References: pyfixest (``fepois``, ``feols``) on the long tables of simulated panels with missing
cells and two or three effects, and on fixest's real trade panel (with fixest's published
estimate); Newton's fit of the same model; finite differences of the log-likelihood for the
gradient of the flat parameter vector and for the curvature the preconditioner whitens.
``newton_schulz`` and ``adam`` are refused with fe= (asserted on the message, from the API and
the CLI).
"""

from __future__ import annotations

import collections
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from test_fixed_effects import TRADE, fml, make_fe_panel, pyfixest_fit

import daskglm as dg
from daskglm.api.fe_results import FixedEffectsResults
from daskglm.frontend.fe_gradient import EffectsPreconditioner, FixedEffectsGradientObjective
from daskglm.frontend.fixed_effects import AbsorbedWarning

pytest.importorskip("pyfixest")


def _kinds(res) -> collections.Counter:
    return collections.Counter(what for what, _ in res._counter.log)


def _pyfixest(family, df, effects, vcov):
    return pyfixest_fit(family, df, fml(effects), vcov)


# (ndim, family, cov_type, cluster kind, pyfixest vcov): 2-D and 3-D with two effects (single
# dims; interactions with the last dim), 4-D with three (one of them an interaction)
CASES = [
    (2, "poisson", "cluster", "twoway", None),
    (3, "gaussian", "HC1", None, "hetero"),
    (3, "poisson", "nonrobust", None, "iid"),
    (4, "poisson", "cluster", "first", None),
]


@pytest.mark.parametrize("ndim, family, cov, kind, vcov", CASES)
def test_lbfgs_against_pyfixest_and_newton(ndim, family, cov, kind, vcov):
    ds, df, effects = make_fe_panel(ndim, family, seed=ndim)
    dims = tuple(ds["y"].dims)
    cluster = None
    if kind == "first":
        cluster, vcov = dims[0], {"CRV1": dims[0]}
    elif kind == "twoway":
        cluster, vcov = [dims[0], dims[1]], {"CRV1": f"{dims[0]}+{dims[1]}"}
    kw = dict(fe=effects, cov_type=cov, cluster=cluster, chunks=10, progress=False)
    res = dg.fit(ds, "y", ["x1", "x2"], family, solver="lbfgs", **kw)
    ref = _pyfixest(family, df, effects, vcov)
    assert res.converged and isinstance(res, FixedEffectsResults)
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
    assert res.nobs == ref._N
    # Newton on the same model: the same estimates, standard errors and table
    newton = dg.fit(ds, "y", ["x1", "x2"], family, **kw)
    np.testing.assert_allclose(res.params.to_numpy(), newton.params.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(res.bse.to_numpy(), newton.bse.to_numpy(), rtol=1e-7)
    assert res.llf == pytest.approx(newton.llf, rel=1e-12)
    assert list(res.tidy().columns) == list(newton.tidy().columns)
    assert res.n_levels == newton.n_levels and res.df_resid == newton.df_resid
    # the effects agree with Newton's where they are identified: in the linear predictor
    # (interacted effects such as i^k and j^k are defined up to a shift per k); the levels
    # stop within about 1e-6 standard errors of the optimum
    lin, lin_n = (r.predict(which="linear").to_numpy() for r in (res, newton))
    np.testing.assert_allclose(lin, lin_n, atol=1e-6)
    # every iteration is gradient-only: one evaluation pass per function value, no product
    # with the effects' block outside the preconditioner's (re)builds
    n = _kinds(res)
    assert n["eval"] >= res.n_iter
    print(
        f"{ndim}-D {family}: lbfgs {res.n_iter} it., {dict(n)}; newton {newton.n_iter} it., {_kinds(newton)}"
    )


def test_gd_converges_to_pyfixest():
    """Preconditioned gradient ascent with fe= reaches pyfixest's estimates within its default
    iteration limit (4-D panel, three effects)."""
    ds, df, effects = make_fe_panel(4, "poisson", seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dg.ConvergenceWarning)
        res = dg.fit(ds, "y", ["x1", "x2"], "poisson", fe=effects, solver="gd", progress=False)
    ref = _pyfixest("poisson", df, effects, "iid")
    assert res.converged and res.n_iter < 2000
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)


def test_gd_gaussian_3d_against_feols():
    ds, df, effects = make_fe_panel(3, "gaussian", seed=5)
    res = dg.fit(ds, "y", ["x1", "x2"], "gaussian", fe=effects, solver="gd", progress=False)
    ref = _pyfixest("gaussian", df, effects, "iid")
    assert res.converged
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "solver, why",
    [("newton_schulz", "full Hessian"), ("adam", "move all of them at once by the learning rate")],
)
def test_solvers_refused_with_fe(solver, why):
    ds, _, effects = make_fe_panel(3, "poisson")
    with pytest.raises(ValueError) as err:
        dg.fit(ds, "y", ["x1"], "poisson", fe=effects, solver=solver)
    msg = str(err.value)
    assert f"solver={solver!r} cannot fit models with fe=" in msg and why in msg
    assert "solver='newton'" in msg and "solver='lbfgs'" in msg and "solver='gd'" in msg


def test_cli_refuses_newton_schulz_with_fe(tmp_path, capsys):
    """The command line: exit code 2 (bad input) with the same message."""
    from daskglm.api.cli import main

    ds, _, _ = make_fe_panel(3, "poisson")
    store = str(tmp_path / "p.zarr")
    ds[["y", "x1"]].to_zarr(store, mode="w")
    code = main(
        ["fit", store, "--y", "y", "--x", "x1", "--fe", "i^k", "--solver", "newton_schulz", "--no-progress"]
    )
    assert code == 2 and "cannot fit models with fe=" in capsys.readouterr().err


def test_dropped_levels_and_absorbed_covariate_with_lbfgs():
    """A level whose counts are all 0 is dropped (pyfixest's nobs) and a covariate on an
    effect's own dims is absorbed (warned, dropped), as with Newton."""
    ds, df, effects = make_fe_panel(3, "poisson", seed=3)
    ds["y"][0] = 0.0  # every cell of i00: the (i00, k) levels have all-zero counts
    ds["x_ik"] = (("i", "k"), np.random.default_rng(1).normal(size=(14, 6)))
    df = ds.to_dataframe().reset_index().dropna(subset=["y"])
    with pytest.warns(AbsorbedWarning, match="x_ik"):
        res = dg.fit(ds, "y", ["x1", "x2", "x_ik"], "poisson", fe=effects, solver="lbfgs", progress=False)
    ref = _pyfixest("poisson", df, effects, "iid")
    assert res.absorbed == ["x_ik"] and list(res.params.index) == ["x1", "x2"]
    assert res.nobs == ref._N and res.levels_dropped["i^k"] == 6
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
    assert np.isnan(res.fixed_effects["i^k"].sel(i="i00")).all()
    assert "Absorbed by the effects" in res.summary() and "Dropped cells" in res.summary()


def test_nb2_lbfgs_equals_newton():
    """NB2 with log-alpha estimated: log-alpha is one more parameter beside the covariates."""
    ds, _, effects = make_fe_panel(4, "negative_binomial", seed=2)
    fam = dg.NegativeBinomial(alpha=None)
    res = dg.fit(ds, "y", ["x1", "x2"], fam, fe=effects, solver="lbfgs", progress=False)
    newton = dg.fit(ds, "y", ["x1", "x2"], fam, fe=effects, progress=False)
    assert res.converged
    np.testing.assert_allclose(res.params.to_numpy(), newton.params.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(res.bse.to_numpy(), newton.bse.to_numpy(), rtol=1e-6)
    assert res.alpha == pytest.approx(newton.alpha, rel=1e-7)


def _objective(ds, effects, family="gaussian"):
    """The gradient solvers' objective of a small panel, as ``dg.fit`` builds it."""
    from dataclasses import replace

    from daskglm.api.registry import resolve_family
    from daskglm.frontend.fixed_effects import parse_effects
    from daskglm.frontend.objective import make_objective, run_setup
    from daskglm.frontend.panel import build_panel
    from daskglm.graph.passes import PassCounter

    panel = build_panel(ds, "y", ["x1", "x2"], resolve_family(family), intercept=False)
    counter = PassCounter()
    setup = run_setup(panel, counter)
    panel = replace(panel, layout=setup.layout)
    eff = parse_effects(effects, panel.layout.dims, panel.sizes)
    return make_objective(panel, setup, counter, eff, True, "parameters")


def test_one_pass_gives_ll_and_every_gradient():
    """A call without the Hessian is one evaluation pass; its gradient over covariates and
    levels equals central differences of the log-likelihood."""
    ds, _, effects = make_fe_panel(3, "poisson", seed=1)
    ob = _objective(ds, effects, "poisson")
    assert isinstance(ob, FixedEffectsGradientObjective)
    rng = np.random.default_rng(0)
    x = ob.start() + 0.1 * rng.normal(size=ob.n_params)
    before = ob.counter.passes
    e = ob(x, hessian=False)
    assert ob.counter.passes == before + 1 and ob.counter.log[-1][0] == "eval" and e.hess is None
    P = ob.n_small
    used = np.flatnonzero(np.concatenate([n.ravel() for n in ob.drops.n_used]) > 0)
    for k in [0, 1, P + used[0], P + used[len(used) // 2], P + used[-1]]:
        h = 1e-5
        d = np.zeros_like(x)
        d[k] = h
        fd = (ob(x + d, hessian=False).ll - ob(x - d, hessian=False).ll) / (2 * h)
        assert e.grad[k] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_preconditioner_whitens_the_information():
    """``R' (-H) R`` at the point the preconditioner is built: the identity on the covariates,
    no coupling between covariates and levels (each covariate is centred on the effects), unit
    diagonal on the levels; checked with differences of the gradient (Gaussian: exact)."""
    ds, _, effects = make_fe_panel(3, "gaussian", seed=2)
    ob = _objective(ds, effects)
    x = ob.start()
    e = ob(x, hessian=True)
    pre = ob.preconditioner(e)
    assert isinstance(pre, EffectsPreconditioner)
    rng = np.random.default_rng(3)
    # R and R' are transposes of each other
    u, g = rng.normal(size=ob.n_params), rng.normal(size=ob.n_params)
    assert u @ pre.to_theta(g) == pytest.approx(pre.to_beta(u) @ g, rel=1e-12)
    P = ob.n_small
    live = np.flatnonzero(pre.s > 0)
    for k in [0, 1, P + live[0], P + live[-1]]:
        u = np.zeros(ob.n_params)
        u[k] = 1.0
        v = pre.to_beta(u)
        col = pre.to_theta(ob(x, hessian=False).grad - ob(x + v, hessian=False).grad)  # R'(-H)R e_k
        if k < P:
            np.testing.assert_allclose(col[:P], np.eye(P)[k], atol=1e-8)
            assert np.max(np.abs(col[P:])) < 1e-8
        else:
            assert col[k] == pytest.approx(1.0, rel=1e-8)
            assert np.max(np.abs(col[:P])) < 1e-8


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_trade_gravity_lbfgs_against_pyfixest():
    """fixest's trade panel (38,325 flows): PPML with Origin^Product + Destination effects
    (300 + 15 levels) by lbfgs and gd, and fixest's own example with four effects by lbfgs
    (log(dist_km) = -1.52787)."""
    import pyfixest as pf

    trade = pd.read_csv(TRADE)
    trade["log_dist"] = np.log(trade["dist_km"])
    ds = trade.set_index(["Origin", "Destination", "Product", "Year"])[["Euros"]].to_xarray()
    ds["log_dist"] = trade.groupby(["Origin", "Destination"])["log_dist"].first().to_xarray()
    for fe, rhs, solver in [
        ([("Origin", "Product"), "Destination"], "Origin^Product + Destination", "lbfgs"),
        ([("Origin", "Product"), "Destination"], "Origin^Product + Destination", "gd"),
        (["Origin", "Destination", "Product", "Year"], "Origin + Destination + Product + Year", "lbfgs"),
    ]:
        res = dg.fit(
            ds, "Euros", ["log_dist"], "poisson", fe=fe, solver=solver, cov_type="cluster",
            cluster="Origin", progress=False,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = pf.fepois(f"Euros ~ log_dist | {rhs}", data=trade, vcov={"CRV1": "Origin"}, iwls_tol=1e-12)
        assert res.converged
        np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-7)
        np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
        assert res.nobs == ref._N
        print(f"trade {rhs}: {solver} {res.n_iter} it., {dict(_kinds(res))}")
    assert res.params["log_dist"] == pytest.approx(-1.52787, abs=5e-6)


@pytest.mark.slow
def test_lbfgs_fe_on_a_distributed_cluster(tmp_path):
    """Two worker processes (the data and W persisted on them; the preconditioner's products
    are dask passes over W, the gradient-only evaluations keep nothing) give the threaded
    Newton fit."""
    from distributed import Client, LocalCluster

    ds, _, effects = make_fe_panel(3, "poisson", seed=9, missing=0.1)
    store = str(tmp_path / "p.zarr")
    ds[["y", "x1", "x2"]].chunk({"i": 7, "j": 6}).to_zarr(store, mode="w")
    kw = dict(fe=effects, cov_type="cluster", cluster="i + j", progress=False)
    ref = dg.fit(store, "y", ["x1", "x2"], "poisson", **kw)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        res = dg.fit(store, "y", ["x1", "x2"], "poisson", client=client, solver="lbfgs", **kw)
    assert res.persisted and res.converged
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse.to_numpy(), rtol=1e-7)
