"""Property test: random panel shapes, block structures and chunkings agree with statsmodels."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import xarray as xr
from helpers import expand
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import daskglm as dg


@st.composite
def panels(draw):
    ndim = draw(st.integers(1, 3))
    names = ["p", "q", "r"][:ndim]
    sizes = {d: draw(st.integers(3, 7)) for d in names}
    subsets = [s for r in range(1, ndim + 1) for s in itertools.combinations(names, r)]
    chosen = draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=4, unique=True))
    chunks = tuple(draw(st.integers(1, sizes[d])) for d in names)
    seed = draw(st.integers(0, 2**16))
    return sizes, chosen, chunks, seed


def poisson_mle_exists(X: np.ndarray, y: np.ndarray) -> bool:
    """Haberman's condition, checked by a linear program independent of any GLM code.

    The Poisson MLE (full-rank X) fails to exist iff some direction d has X d <= 0 on the zero
    counts, X d = 0 on the positive ones and X d < 0 somewhere.
    """
    zero = y == 0
    if not zero.any():
        return True
    Xz, Xp = X[zero], X[~zero]
    lp = linprog(
        c=Xz.sum(axis=0),
        A_ub=np.vstack([Xz, -Xz]),
        b_ub=np.concatenate([np.zeros(len(Xz)), np.ones(len(Xz))]),
        A_eq=Xp if len(Xp) else None,
        b_eq=np.zeros(len(Xp)) if len(Xp) else None,
        bounds=[(None, None)] * X.shape[1],
    )
    return lp.status == 0 and lp.fun > -1e-7


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panels())
@example(({"p": 3}, [("p",)], (1,), 58))  # separated: y = [0, 1, 0] (found by CI)
@example(({"p": 3}, [("p",)], (1,), 29))  # all-zero response
def test_any_shape_and_chunking_matches_statsmodels(spec):
    sizes, chosen, chunks, seed = spec
    rng = np.random.default_rng(seed)
    dims = tuple(sizes)
    ds = xr.Dataset(coords={d: np.arange(n) for d, n in sizes.items()})
    x = []
    eta = np.full(tuple(sizes.values()), 0.3)
    for k, sub in enumerate(chosen):
        name = f"x{k}_" + "".join(sub)
        vals = rng.normal(size=tuple(sizes[d] for d in sub))
        ds[name] = (sub, vals)
        eta = eta + 0.2 * ds[name].broadcast_like(xr.DataArray(eta, dims=dims)).transpose(*dims).values
        x.append(name)
    ds["y"] = (dims, rng.poisson(np.exp(eta)).astype(float))
    df = expand(ds, x)
    X = sm.add_constant(df[x], has_constant="add")
    if np.linalg.matrix_rank(X.to_numpy()) < X.shape[1]:
        return  # a block with a single level is collinear with the intercept: covered elsewhere
    if not poisson_mle_exists(X.to_numpy(), df["y"].to_numpy()):
        # tiny panels can be separated: the fit must say so rather than report finite estimates
        with pytest.warns(dg.SeparationWarning):
            dg.fit(ds, "y", x, "poisson", chunks=chunks)
        return
    ref = sm.GLM(df["y"], X, family=sm.families.Poisson()).fit(tol=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dg.SeparationWarning)
        res = dg.fit(ds, "y", x, "poisson", chunks=chunks)
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.llf, ref.llf, rtol=1e-8)
