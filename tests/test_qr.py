"""The tall-skinny QR pass (:mod:`daskglm.kernels.qr`) against the expanded design, and its solves.

References are independent: the long table of ``tests/helpers.py`` (covariates broadcast in
pandas), on which ``X' W X``, ``X' w g`` and the Newton step are formed directly in numpy, and
``numpy.linalg.inv`` / ``solve`` of the Hessian for the QR-based step and inverse information.
Panels have blocks over subsets of the dims, a feature dim, weights and missing cells, and
chunks that cut every dim, so the per-chunk factors are combined in a tree.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from helpers import expand, make_panel

import daskglm as dg
from daskglm.frontend.objective import run_setup
from daskglm.frontend.panel import build_panel
from daskglm.graph import passes as graph
from daskglm.graph.qr import qr_graph
from daskglm.kernels.inference import _inverse_information, inverse_information_qr
from daskglm.kernels.qr import qr_grad_size, qr_unpack, qr_width
from daskglm.solvers.newton import newton_direction, qr_direction


def _setup(ndim: int):
    """A Gaussian panel with weights and missing cells, chunks of 3 along every dim."""
    ds, x = make_panel(ndim, "gaussian", seed=3, weights=True, missing=0.15)
    chunks = tuple(3 for _ in ds["y"].dims)
    panel = build_panel(ds, "y", x, dg.Gaussian(), weights="w", chunks=chunks)
    setup = run_setup(panel, graph.PassCounter())
    df = expand(ds, x, ["w"])
    df = df[np.isfinite(df["y"])]
    names = setup.layout.param_names[: setup.layout.n_beta]
    X = np.column_stack([np.ones(len(df)) if n == "Intercept" else df[n].to_numpy() for n in names])
    return panel, setup, df, X


@pytest.mark.parametrize("ndim", [1, 3])
def test_design_factor_is_the_gram_root(ndim):
    panel, setup, df, X = _setup(ndim)
    layout = setup.layout
    (vec,) = dask.compute(qr_graph(layout, panel.arrays, np.zeros(layout.n_params), "design"))
    f = qr_unpack(vec, qr_width(layout, "design"))
    w = df["w"].to_numpy()
    ref = X.T @ (w[:, None] * X)
    np.testing.assert_allclose(f.r.T @ f.r, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert np.allclose(np.tril(f.r, -1), 0.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_newton_factor_and_extended_gradient(ndim):
    panel, setup, df, X = _setup(ndim)
    layout = setup.layout
    rng = np.random.default_rng(0)
    beta = rng.normal(size=layout.n_params) * 0.3
    (vec,) = dask.compute(qr_graph(layout, panel.arrays, beta, "newton"))
    f = qr_unpack(vec, qr_width(layout, "newton"), qr_grad_size(layout, "newton"))
    w, y = df["w"].to_numpy(), df["y"].to_numpy()
    r = y - X @ beta
    A = np.column_stack([X * np.sqrt(w)[:, None], np.sqrt(w) * r])
    np.testing.assert_allclose(f.r.T @ f.r, A.T @ A, rtol=1e-11, atol=1e-11 * np.abs(A.T @ A).max())
    g = X.T @ (w * r)
    np.testing.assert_allclose(f.grad, g, rtol=1e-12, atol=1e-12 * np.abs(X).max() * np.abs(w * r).sum())
    # the step R^{-1} Q'r is the weighted least-squares (Newton) step
    step = qr_direction(f, g, -(X.T @ (w[:, None] * X)))
    np.testing.assert_allclose(step, np.linalg.lstsq(A[:, :-1], A[:, -1], rcond=None)[0], rtol=1e-9)


def test_qr_step_and_inverse_with_an_extra_parameter():
    """NB2 with log-alpha: the Schur-complement solve equals the full Hessian solve."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)) * [1.0, 1e3, 1e-2, 5.0]
    W = rng.uniform(0.5, 2.0, size=200)
    R = np.linalg.qr(np.sqrt(W)[:, None] * X, mode="r")
    Hbb = -(X.T @ (W[:, None] * X))
    b = rng.normal(size=4)
    H = np.zeros((5, 5))
    H[:4, :4] = Hbb
    H[:4, 4] = H[4, :4] = b
    H[4, 4] = -(b @ np.linalg.solve(-Hbb, b)) - 3.0  # negative definite
    g = rng.normal(size=5)
    F = np.zeros((5, 5))
    F[:4, :4] = R
    F[:4, 4] = np.linalg.solve(R.T, g[:4])
    factor = type("F", (), {"r": F, "grad": None})()
    np.testing.assert_allclose(qr_direction(factor, g, H), np.linalg.solve(-H, g), rtol=1e-10)
    np.testing.assert_allclose(inverse_information_qr(R, H), np.linalg.inv(-H), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(_inverse_information(H), np.linalg.inv(-H), rtol=1e-10, atol=1e-14)
    step, damped = newton_direction(g, H)
    assert not damped
    np.testing.assert_allclose(step, np.linalg.solve(-H, g), rtol=1e-10)


def test_negative_curvature_cells_are_counted():
    """Cells with W = -w h < 0 make the factor unusable (the solver falls back to the Hessian)."""
    ds, x = make_panel(1, "poisson", seed=2)
    panel = build_panel(ds, "y", x, dg.Poisson())
    setup = run_setup(panel, graph.PassCounter())
    layout = setup.layout
    (vec,) = dask.compute(qr_graph(layout, panel.arrays, np.zeros(layout.n_params), "newton"))
    assert qr_unpack(vec, qr_width(layout, "newton")).n_negative == 0


@pytest.mark.parametrize("family", ["poisson", "negative_binomial", "binomial"])
def test_qr_route_matches_hessian_route(family):
    """Forced QR steps and forced normal equations give the same fit on a 3-D panel."""
    fam = {
        "poisson": dg.Poisson(),
        "negative_binomial": dg.NegativeBinomial(),
        "binomial": dg.Binomial(trials="trials"),
    }
    ds, x = make_panel(3, family, seed=4, missing=0.1)
    a = dg.fit(ds, "y", x, fam[family], chunks=(3, 3, 3), qr="always", progress=False)
    b = dg.fit(ds, "y", x, fam[family], chunks=(3, 3, 3), qr="never", progress=False)
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(a.bse.to_numpy(), b.bse.to_numpy(), rtol=1e-8)
    assert a.llf == pytest.approx(b.llf, rel=1e-12)


def test_bad_qr_option():
    ds, x = make_panel(1, "gaussian")
    with pytest.raises(ValueError, match="qr='sometimes'"):
        dg.fit(ds, "y", x, qr="sometimes", progress=False)
