"""The double-double Gaussian gradient (:mod:`daskglm.kernels.accurate`) against exact arithmetic.

References are exact: Python's :mod:`fractions` on the long table of ``tests/helpers.py``
(covariates broadcast in pandas; weights, an offset, missing cells, chunks that cut every dim
so chunk results are combined in a tree) and on NIST's Wampler5 as printed (the StRD files of
the shared reference folder, see ``tests/test_nist.py``). The solvers that use this gradient
for their last step are tested in ``tests/test_gradient_solvers.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import expand, make_panel

import daskglm as dg
from daskglm.frontend.objective import make_objective, run_setup
from daskglm.frontend.panel import build_panel
from daskglm.graph import passes as graph
from daskglm.kernels.accurate import (
    accurate_chunk,
    accurate_combine,
    accurate_unpack,
    dd_sum,
    two_prod,
    two_sum,
)
from daskglm.solvers.base import Evaluation
from daskglm.solvers.preconditioning import accurate_evaluator

NIST_DIR = Path("/work/shared/reference/nist-strd")


def _objective(ds, x, family, **kw):
    panel = build_panel(ds, "y", x, family, **kw)
    counter = graph.PassCounter()
    setup = run_setup(panel, counter)
    return make_objective(replace(panel, layout=setup.layout), setup, counter), counter


def _exact_gradient(X, y, w, off, beta) -> list[Fraction]:
    """``X' w (y - off - X beta)`` in rational arithmetic."""
    Xq = [[Fraction(v) for v in row] for row in X.tolist()]
    bq = [Fraction(v) for v in beta.tolist()]
    v = [
        Fraction(wi) * (Fraction(yi) - Fraction(oi) - sum(a * b for a, b in zip(row, bq, strict=True)))
        for row, yi, wi, oi in zip(Xq, y.tolist(), w.tolist(), off.tolist(), strict=True)
    ]
    return [sum(row[j] * vi for row, vi in zip(Xq, v, strict=True)) for j in range(X.shape[1])]


def test_error_free_transformations():
    """``two_sum`` and ``two_prod`` are exact; ``dd_sum`` is double-double accurate under
    cancellation of 30 orders of magnitude."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=500) * 10.0 ** rng.integers(-100, 100, size=500)
    b = rng.normal(size=500) * 10.0 ** rng.integers(-100, 100, size=500)
    b[:100] = -a[:100] * (1 + 1e-12 * rng.normal(size=100))  # near-cancelling pairs
    for f, op in ((two_sum, lambda x, y: x + y), (two_prod, lambda x, y: x * y)):
        hi, lo = f(a, b)
        for k in range(a.size):
            assert Fraction(hi[k]) + Fraction(lo[k]) == op(Fraction(a[k]), Fraction(b[k]))
    terms = rng.normal(size=(1000, 3)) * 10.0 ** rng.integers(0, 16, size=(1000, 3))
    answer = [1e-3, 1.0, 1e3]
    terms = rng.permutation(np.vstack([terms, -terms, [answer]]))  # all cancels but the answer
    hi, lo = dd_sum(terms)
    for j in range(3):
        exact = sum(Fraction(v) for v in terms[:, j])
        assert exact == Fraction(answer[j])
        # the error is about log2(n) eps^2 sum |s| (1e-13 here), float64's eps sum |s| (1e2)
        assert abs(Fraction(hi[j]) + Fraction(lo[j]) - exact) <= 1e-30 * float(np.abs(terms[:, j]).sum())
        assert hi[j] == pytest.approx(answer[j], rel=1e-9)
    assert not np.allclose(np.sum(terms, axis=0), answer, rtol=0.1)


@pytest.mark.parametrize("ndim", [1, 3])
def test_panel_gradient_against_exact_arithmetic(ndim):
    """On a panel with blocks over subsets of the dims, a feature dim, weights, an offset,
    missing cells and chunks of 3, with large residuals, at the least-squares estimates (where
    the gradient cancels): within double-double rounding of the exact gradient, where the
    float64 pass is off by about eps |X|' |w r|."""
    ds, x = make_panel(ndim, "gaussian", seed=5, weights=True, offset=True, missing=0.1)
    ds["y"] = ds["y"] * 1e6 + 3e7  # residuals of 1e6 around a mean of 3e7
    chunks = tuple(3 for _ in ds["y"].dims)
    ob, counter = _objective(ds, x, dg.Gaussian(), weights="w", offset="off", chunks=chunks)
    df = expand(ds, x, ["w", "off"])
    df = df[np.isfinite(df["y"])]
    names = ob.layout.param_names[: ob.layout.n_beta]
    X = np.column_stack([np.ones(len(df)) if n == "Intercept" else df[n].to_numpy() for n in names])
    y, w, off = df["y"].to_numpy(), df["w"].to_numpy(), df["off"].to_numpy()
    sw = np.sqrt(w)
    beta = np.linalg.lstsq(X * sw[:, None], (y - off) * sw, rcond=None)[0]
    exact = _exact_gradient(X, y, w, off, beta)
    scale = np.abs(X).T @ np.abs(w * (y - off - X @ beta))  # |X|' |w r|

    e = ob.accurate_evaluation(beta)
    assert counter.passes == 2  # setup, and the evaluation with the accurate gradient: one pass
    err = np.array([abs(float(Fraction(g) - ex)) for g, ex in zip(e.grad, exact, strict=True)])
    ulp = np.spacing(np.abs([float(v) for v in exact]))
    assert np.all(err <= ulp + 1e-28 * scale), (err, scale)
    plain = ob(beta, hessian=False)
    assert plain.ll == e.ll  # the rest of the evaluation is the usual pass
    err64 = np.array([abs(float(Fraction(g) - ex)) for g, ex in zip(plain.grad, exact, strict=True)])
    assert err64.max() > 1e6 * max(err.max(), 1e-300)  # what the double-double buys
    assert np.all(err64 <= 1e-12 * scale)  # float64's error is of order eps |X|' |w r|


def _wampler5():
    if not (NIST_DIR / "Wampler5.json").exists():
        pytest.skip(f"NIST StRD files are not at {NIST_DIR}")
    df = pd.read_csv(NIST_DIR / "Wampler5.csv", dtype=str)
    meta = json.loads((NIST_DIR / "Wampler5.json").read_text())
    x = df["x"].astype(float).to_numpy()
    X = np.column_stack([x**p for p in range(6)])
    return X, df["y"].astype(float).to_numpy(), meta


def test_wampler5_float64_gradient_noise_floor(record_property):
    """The diagnosis behind the double-double pass, on NIST's Wampler5 (x = 0..20, covariates
    up to x^5 = 3.2e6, residuals of 2e7): at points within 1e-7 standard errors of the
    certified estimates, the float64 gradient's error mapped through ``(X'X)^-1`` moves the
    estimates by about 1e-6 (recorded, not asserted: it depends on the summation order); the
    double-double gradient, over 7 chunks combined in a tree, by less than 1e-13."""
    X, y, meta = _wampler5()
    ds = xr.Dataset({"y": ("obs", y), **{f"x{p}": ("obs", X[:, p]) for p in range(1, 6)}})
    cols = [f"x{p}" for p in range(1, 6)]
    ob, _ = _objective(ds, cols, dg.Gaussian(), chunks=7)
    assert ob.layout.param_names == ["Intercept", *cols]
    cert = np.array([q["estimate"]["value"] for q in meta["certified"]["parameters"]])
    Xq = [[Fraction(v) for v in row] for row in X.tolist()]
    gram = [[sum(r[i] * r[j] for r in Xq) for j in range(6)] for i in range(6)]
    inv = np.linalg.inv(np.array(gram, dtype=float))  # the reference's, not the solver's
    se = np.sqrt(np.diag(inv))
    rng = np.random.default_rng(1)
    moved64, moved = [], []
    for _ in range(8):
        beta = cert + rng.normal(size=6) * se * 1e-7
        exact = np.array([float(v) for v in _exact_gradient(X, y, np.ones(21), np.zeros(21), beta)])
        e64 = ob(beta, hessian=False)
        moved64.append(np.abs(inv @ (e64.grad - exact)).max())
        # the objective's bound on that rounding (what decides the extra pass) holds
        assert np.all(np.abs(inv @ (e64.grad - exact)) <= np.abs(inv) @ ob.gradient_rounding(e64))
        moved.append(np.abs(inv @ (ob.accurate_evaluation(beta).grad - exact)).max())
    record_property("float64_gradient_moves_estimates_by", float(np.median(moved64)))
    print(
        f"\nWampler5: float64 gradient moves the estimates by {np.median(moved64):.1e} (median), "
        f"{max(moved64):.1e} (max); double-double by {max(moved):.1e}"
    )
    assert max(moved) <= 1e-13


def test_combine_is_double_double():
    """Chunk results whose float64 sum loses everything are combined in double-double."""
    parts = np.array([[1e17, 0.0], [3.0, 0.0], [-1e17, 0.0], [0.0, 0.5]])  # rows: (hi, lo)
    assert accurate_unpack(accurate_combine(parts, 1), 1).tolist() == [3.5]
    assert (1e17 + 3.0) - 1e17 == 0.0  # a float64 tree sum loses the 3
    # combining combined results (a deeper tree) is the same
    left, right = accurate_combine(parts[:2], 1), accurate_combine(parts[2:], 1)
    assert accurate_unpack(accurate_combine(np.vstack([left, right]), 1), 1).tolist() == [3.5]


def test_other_families_have_none():
    ds, x = make_panel(1, "poisson", seed=2)
    ob, counter = _objective(ds, x, dg.Poisson())
    assert ob.gradient_rounding(ob(np.zeros(ob.n_params), hessian=False)) is None
    before = counter.passes
    assert ob.accurate_evaluation(np.zeros(ob.n_params)) is None
    assert counter.passes == before
    with pytest.raises(ValueError, match="Gaussian"):
        accurate_chunk(ob.layout, np.zeros(ob.n_params), *[np.asarray(a) for a in ob.panel.arrays])


def test_accurate_evaluator_judges_the_rounding():
    """The double-double pass is asked for when ``|M| u`` (the gradient-rounding bound mapped
    by the step's matrix) exceeds 1e-10 of a coefficient, floored at 1e-3 of the largest."""
    M = np.array([[2.0, -1.0], [-1.0, 3.0]])

    class Stub:
        u = None

        def accurate_evaluation(self, params):
            return "accurate"

        def gradient_rounding(self, e):
            return self.u

    ob = Stub()
    e = Evaluation(np.array([1.0, 2.0]), 0.0, np.zeros(2), None, 0.0)
    assert accurate_evaluator(ob, e, lambda g: M @ g) is None  # no bound: no accurate pass
    ob.u = np.array([1e-11, 0.0])  # moves b by (2e-11, 1e-11): below 1e-10 of (1, 2)
    assert accurate_evaluator(ob, e, lambda g: M @ g) is None
    ob.u = np.array([0.0, 1e-10])  # moves b by (1e-10, 3e-10): b_1 by more than 1e-10 of 2
    assert accurate_evaluator(ob, e, lambda g: M @ g) == ob.accurate_evaluation
    e.params = np.array([0.0, 2e3])  # b_0 = 0 is judged against 1e-3 of 2e3
    ob.u = np.array([1e-11, 0.0])
    assert accurate_evaluator(ob, e, lambda g: M @ g) is None
    assert accurate_evaluator(object(), e, lambda g: M @ g) is None  # objectives without it
