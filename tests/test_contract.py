"""The block contractions against the expanded design matrix, built cell by cell in numpy.

The engine never forms the N x P design; here it is formed explicitly (small panels) as the
independent reference for ``X beta``, ``X' v`` and ``X' diag(c) X``: over whole chunks, over
slabs accumulated with :class:`~daskglm.kernels.contract.Accumulator`, with blocks on every subset
of the panel axes (so both the batched-GEMM and the product routes run), and with full-grid
blocks built lazily slab by slab.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskglm.kernels import contract
from daskglm.kernels.contract import BlockContractor, sum_axes


def _panel(rng, shape, block_axes, sizes, lazy_full: bool):
    """Block arrays (feature first, size 1 off the block's axes) and the expanded design."""
    m = len(shape)
    X, builders, columns = [], {}, []
    for axes, p in zip(block_axes, sizes, strict=True):
        grid = [shape[d] if d in axes else 1 for d in range(m)]
        x = rng.standard_normal([p] + grid)
        if lazy_full and len(axes) == m and m:
            X.append(None)
            builders[len(X) - 1] = lambda index, x=x: x[(slice(None),) + tuple(index)].copy()
        else:
            X.append(x)
        columns += [np.broadcast_to(x[q], shape).reshape(-1) for q in range(p)]
    design = np.stack(columns, axis=1) if columns else np.zeros((int(np.prod(shape)), 0))
    return X, builders, design


def _contractor(X, block_axes, shape, sizes, builders):
    return BlockContractor(X, [tuple(sorted(a)) for a in block_axes], shape, sizes, builders)


def _slabbed(con: BlockContractor, kind: str, arr: np.ndarray, ax: int, step: int) -> np.ndarray:
    acc = con.accumulator(kind)
    for start in range(0, con.shape[ax], step):
        stop = min(start + step, con.shape[ax])
        idx = (slice(None),) * ax + (slice(start, stop),)
        acc.add(con.slab(ax, start, stop), np.ascontiguousarray(arr[idx]))
    return acc.result()


@st.composite
def layouts(draw):
    m = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=m, max_size=m)))
    subsets = [frozenset(s) for r in range(m + 1) for s in itertools.combinations(range(m), r)]
    chosen = draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=6))
    sizes = draw(st.lists(st.integers(1, 3), min_size=len(chosen), max_size=len(chosen)))
    ax = draw(st.integers(0, m - 1))
    step = draw(st.integers(1, max(shape[ax], 1)))
    lazy = draw(st.booleans())
    batched_min = draw(st.sampled_from([1, 64]))  # force the batched-GEMM route, or the default
    return shape, chosen, sizes, ax, step, lazy, batched_min


@settings(max_examples=120, deadline=None)
@given(layouts(), st.integers(0, 2**31 - 1))
def test_contractions_match_the_expanded_design(case, seed):
    shape, block_axes, sizes, ax, step, lazy, batched_min = case
    rng = np.random.default_rng(seed)
    X, builders, design = _panel(rng, shape, block_axes, sizes, lazy)
    v = rng.standard_normal(shape)
    c = rng.uniform(0.1, 2.0, shape)
    beta = rng.standard_normal(design.shape[1])
    old = contract.MIN_BATCHED_CELLS
    contract.MIN_BATCHED_CELLS = batched_min
    try:
        con = _contractor(X, block_axes, shape, sizes, builders)
        want_vec = design.T @ v.reshape(-1)
        want_mat = design.T @ (c.reshape(-1)[:, None] * design)
        want_eta = (design @ beta).reshape(shape)
        np.testing.assert_allclose(con.vector(v), want_vec, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(con.matrix(c), want_mat, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(con.linear(beta, 0.0), want_eta, rtol=1e-10, atol=1e-10)
        con = _contractor(X, block_axes, shape, sizes, builders)
        np.testing.assert_allclose(_slabbed(con, "vector", v, ax, step), want_vec, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(_slabbed(con, "matrix", c, ax, step), want_mat, rtol=1e-10, atol=1e-10)
        grids = con.linear_grids(beta)
        for start in range(0, shape[ax], step):
            stop = min(start + step, shape[ax])
            idx = (slice(None),) * ax + (slice(start, stop),)
            got = con.slab(ax, start, stop).linear(beta, 0.0, grids)
            np.testing.assert_allclose(got, want_eta[idx], rtol=1e-10, atol=1e-10)
    finally:
        contract.MIN_BATCHED_CELLS = old


def test_three_dim_panel_with_every_block_and_an_offset():
    """The benchmark's layout (7 dim-blocks of 4 + intercept) in slabs of 3 along i."""
    rng = np.random.default_rng(3)
    shape = (7, 11, 13)
    block_axes = [frozenset()] + [
        frozenset(s) for r in (3, 2, 1) for s in itertools.combinations(range(3), r)
    ]
    sizes = [1] + [4] * 7
    X, builders, design = _panel(rng, shape, block_axes, sizes, lazy_full=True)
    con = _contractor(X, block_axes, shape, sizes, builders)
    assert any(batched for _, _, batched in con.pairs)
    c = rng.uniform(0.1, 2.0, shape)
    offset = rng.standard_normal((7, 1, 13))
    beta = rng.standard_normal(design.shape[1])
    np.testing.assert_allclose(
        _slabbed(con, "matrix", c, 0, 3), design.T @ (c.reshape(-1)[:, None] * design), rtol=1e-11
    )
    want = (design @ beta).reshape(shape) + offset
    np.testing.assert_allclose(con.linear(beta, offset), want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize(
    "shape, drop",
    [
        ((5, 6, 7), (2,)),
        ((5, 6, 7), (0,)),
        ((5, 6, 7), (1,)),
        ((5, 6, 7), (0, 2)),
        ((5, 1, 7), (0, 2)),
        ((3, 4, 5, 6), (1, 2)),
        ((3, 4, 5, 6), (0, 3)),
        ((8,), (0,)),
    ],
)
def test_sum_axes_equals_ndarray_sum(shape, drop):
    a = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_allclose(sum_axes(a, drop), a.sum(axis=drop, keepdims=True), rtol=1e-12)
