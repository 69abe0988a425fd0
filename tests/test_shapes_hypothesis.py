"""Property test: random panel shapes, block structures and chunkings agree with statsmodels."""

from __future__ import annotations

import itertools

import numpy as np
import statsmodels.api as sm
import xarray as xr
from helpers import expand
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(panels())
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
    ref = sm.GLM(df["y"], X, family=sm.families.Poisson()).fit(tol=1e-13)
    res = dg.fit(ds, "y", x, "poisson", chunks=chunks)
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.llf, ref.llf, rtol=1e-8)
