"""The effects' inner solver and its products against independent references.

* ``block_pcg`` (Jacobi-preconditioned block CG) against a dense minimum-norm solve
  (``scipy.linalg.lstsq``) of the same singular ``A``, with dropped levels, a warm start, and
  ``A X`` returned from its residual against the dense ``A @ X``;
* the in-process product (``FixedEffectPasses.product_flat``: every chunk's rows indexing the
  whole level arrays, chunks shared among threads) against ``D' diag(W) D V`` built with
  ``scipy.sparse`` from the same cells, on uneven chunks that cut every axis;
* real data: fixest's ``trade`` panel (``../shared/data/fixest-trade``, skipped when absent), with
  the ``W`` of a PPML fit with three effects: the product against ``scipy.sparse`` and the
  solve against ``lstsq``.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr
from helpers import TRADE
from scipy import linalg

import daskglm as dg
from daskglm.graph import effects as graph_effects
from daskglm.kernels.effects import Effect, block_pcg


def _dummies(effects: list[Effect], shape: tuple[int, ...]) -> sp.csr_matrix:
    """The effects' design (cells x levels, concatenated in the effects' order), C order."""
    index = np.indices(shape).reshape(len(shape), -1)
    cols, start = [], 0
    for e in effects:
        local = np.ravel_multi_index(tuple(index[a] for a in e.axes), e.shape) if e.axes else 0
        cols.append(local + start)
        start += e.size
    n = index.shape[1]
    rows = np.tile(np.arange(n), len(effects))
    return sp.csr_matrix((np.ones(rows.size), (rows, np.concatenate(cols))), shape=(n, start))


def _split(flat: np.ndarray, effects: list[Effect]) -> list[np.ndarray]:
    """(levels, k) -> per effect grid + (k,)."""
    out, start = [], 0
    for e in effects:
        out.append(flat[start : start + e.size].reshape(e.shape + (flat.shape[1],)))
        start += e.size
    return out


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    k = arrays[0].shape[-1]
    return np.concatenate([a.reshape(-1, k) for a in arrays])


def _capture(monkeypatch) -> list:
    """The FixedEffectPasses objects that fits make (to reach the W they keep)."""
    made: list = []
    init = graph_effects.FixedEffectPasses.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(graph_effects.FixedEffectPasses, "__init__", record)
    return made


def _min_norm_solution(A: np.ndarray, B: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``A^+ B`` on the used levels (0 elsewhere) by a dense least-squares solve."""
    X = np.zeros_like(B)
    sub = np.ix_(used, used)
    X[used] = linalg.lstsq(A[sub], B[used], cond=1e-12)[0]
    return X


def _same_solution(X: np.ndarray, ref: np.ndarray, A: np.ndarray, rtol: float) -> None:
    """Solutions of a singular ``A`` differ by null-space vectors: compare ``A X`` and the
    projections that the covariates see (``ref' A X``), not the levels themselves."""
    AX, AR = A @ X, A @ ref
    scale = np.abs(AR).max()
    np.testing.assert_allclose(AX, AR, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(ref.T @ AX, ref.T @ AR, rtol=rtol)


@pytest.mark.parametrize("n_effects", [1, 2, 3])
def test_block_pcg_equals_dense_solve(n_effects):
    """Three right-hand sides in the range of a singular ``A`` (shape 9 x 8 x 5, effects
    (i,k), (j,k), (i,j)), some levels without cells: CG's solution equals the dense
    minimum-norm one, from zero and from a warm start, and ``A X`` from its residual equals
    the dense product."""
    rng = np.random.default_rng(n_effects)
    shape = (9, 8, 5)
    axes = [(0, 2), (1, 2), (0, 1)][:n_effects]
    effects = [Effect(tuple(f"d{a}" for a in ax), ax, tuple(shape[a] for a in ax)) for ax in axes]
    W = rng.gamma(2.0, 1.0, size=shape)
    W[0] = 0.0  # every level of i = 0 without cells
    W[:, 3, 2] = 0.0
    D = _dummies(effects, shape)
    A = (D.T @ sp.diags(W.ravel()) @ D).toarray()
    used = np.diag(A) > 0
    X_true = rng.normal(size=(A.shape[0], 3)) * used[:, None]
    B = A @ X_true
    ref = _min_norm_solution(A, B, used)
    diag = [d[..., 0] for d in _split(np.diag(A)[:, None], effects)]

    def matvec(V):
        return _split(A @ _join(V), effects)

    X, it, rel, AX = block_pcg(matvec, _split(B, effects), diag, rtol=1e-12, product=True)
    assert it < 200 and np.all(rel <= 1e-12)
    _same_solution(_join(X), ref, A, 1e-9)
    np.testing.assert_allclose(_join(AX), A @ _join(X), rtol=0, atol=1e-9 * np.abs(B).max())
    # a warm start near the solution takes fewer products and reaches the same solution
    start = _split(ref + 1e-3 * rng.normal(size=ref.shape) * used[:, None], effects)
    Xw, it_w, _ = block_pcg(matvec, _split(B, effects), diag, x0=start, rtol=1e-12)
    assert it_w <= it
    _same_solution(_join(Xw), ref, A, 1e-9)


def test_block_pcg_returns_each_columns_best_iterate():
    """With cell weights spread over eight orders of magnitude (``exp(N(0, 9))``, as PPML's
    ``W`` on trade flows), CG's residual norms are not monotone. Stopped after every number of
    products from 1 to 60, the iterate returned is each column's best so far: its true residual
    ``|B - A X| / |B|`` (dense) is the relative residual reported, which never rises with more
    products, and ``A X`` from the kept residual equals the dense ``A @ X``."""
    rng = np.random.default_rng(0)
    shape = (9, 8, 5)
    axes = [(0, 2), (1, 2), (0, 1)]
    effects = [Effect(tuple(f"d{a}" for a in ax), ax, tuple(shape[a] for a in ax)) for ax in axes]
    W = np.exp(rng.normal(scale=3.0, size=shape))
    D = _dummies(effects, shape)
    A = (D.T @ sp.diags(W.ravel()) @ D).toarray()
    B = A @ rng.normal(size=(A.shape[0], 3))
    diag = [d[..., 0] for d in _split(np.diag(A)[:, None], effects)]

    def matvec(V):
        return _split(A @ _join(V), effects)

    previous, kept = np.full(3, np.inf), 0
    for m in range(1, 61):
        X, it, rel, AX = block_pcg(matvec, _split(B, effects), diag, rtol=1e-12, max_iter=m, product=True)
        true = np.linalg.norm(B - A @ _join(X), axis=0) / np.linalg.norm(B, axis=0)
        np.testing.assert_allclose(true, rel, rtol=1e-6)
        np.testing.assert_allclose(_join(AX), A @ _join(X), rtol=0, atol=1e-12 * np.abs(B).max())
        assert np.all(rel <= previous)
        kept += int(np.any(rel == previous))  # a column whose last steps did not improve on its best
        previous = rel
    assert kept > 0  # the case this test is for happened


@pytest.mark.parametrize(
    "shape,axes,chunks",
    [
        ((13, 11, 7), [(0, 2), (1, 2), (0, 1)], (5, 4, 3)),  # every axis cut: rows split too
        ((9, 10), [(0,), (1,)], (4, 3)),
        ((5, 4, 3, 6), [(0,), (1, 3), (2,), (0, 1)], (2, 3, 3, 4)),
        ((6, 7, 8), [(2,), (0, 1)], (6, 7, 8)),  # one chunk (one thread)
    ],
)
def test_in_process_product_equals_sparse(monkeypatch, shape, axes, chunks):
    """``product_flat`` after a Poisson fit (the W it keeps, uneven chunks across threads)
    equals ``D' diag(W) D V`` assembled with scipy.sparse from the same cells."""
    made = _capture(monkeypatch)
    rng = np.random.default_rng(len(shape))
    dims = tuple(f"d{a}" for a in range(len(shape)))
    eta = rng.normal(scale=0.3, size=shape)
    ds = xr.Dataset(
        {"y": (dims, rng.poisson(np.exp(1.0 + eta)).astype(float)), "x": (dims, rng.normal(size=shape))}
    )
    fe = [tuple(dims[a] for a in ax) for ax in axes]
    dg.fit(ds, "y", ["x"], "poisson", fe=fe, chunks=chunks, cov_type="nonrobust", progress=False)
    passes = made[-1]
    assert passes._W_local is not None and len(passes._W_local) == int(
        np.prod([-(-n // c) for n, c in zip(shape, chunks, strict=True)])
    )
    W = np.zeros(shape)
    for ix, w in zip(passes.plan.index, passes._W_local, strict=True):
        W[ix] = w
    effects = passes.effects
    D = _dummies(effects, shape)
    A = D.T @ sp.diags(W.ravel()) @ D
    V = rng.normal(size=(A.shape[0], 4))
    got = passes.product_flat(V.T.copy()).T
    np.testing.assert_allclose(got, A @ V, rtol=1e-12, atol=1e-12 * np.abs(A @ V).max())
    # the list interface (the one a cluster's passes share) gives the same
    listed = _join(passes.product(_split(V, effects)))
    np.testing.assert_allclose(listed, got, rtol=1e-12, atol=1e-12 * np.abs(got).max())


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_trade_panel_product_and_solve(monkeypatch):
    """fixest's trade panel (15 x 15 x 20 x 10, 38,325 used cells), PPML with origin-product,
    destination and year effects: the product with the kept ``W`` equals scipy.sparse's, and
    CG on the covariate's cross block equals the dense minimum-norm solve (1e-8 on what the
    covariates see)."""
    made = _capture(monkeypatch)
    trade = pd.read_csv(TRADE)
    trade["log_dist"] = np.log(trade["dist_km"])
    ds = trade.set_index(["Origin", "Destination", "Product", "Year"])[["Euros"]].to_xarray()
    ds["log_dist"] = trade.groupby(["Origin", "Destination"])["log_dist"].first().to_xarray()
    fe = [("Origin", "Product"), "Destination", "Year"]
    dg.fit(ds, "Euros", ["log_dist"], "poisson", fe=fe, chunks=(8, 15, 20, 10), progress=False)
    passes = made[-1]
    shape = tuple(ds.sizes[d] for d in ("Origin", "Destination", "Product", "Year"))
    W = np.zeros(shape)
    for ix, w in zip(passes.plan.index, passes._W_local, strict=True):
        W[ix] = w
    assert np.count_nonzero(W) > 30_000
    effects = passes.effects
    D = _dummies(effects, shape)
    A = (D.T @ sp.diags(W.ravel()) @ D).toarray()
    rng = np.random.default_rng(3)
    V = rng.normal(size=(A.shape[0], 2))
    got = passes.product_flat(V.T.copy()).T
    np.testing.assert_allclose(got, A @ V, rtol=1e-12, atol=1e-12 * np.abs(A @ V).max())
    # the covariate's cross block B = D' W x (x = log distance on the full grid)
    x = np.broadcast_to(ds["log_dist"].transpose("Origin", "Destination").to_numpy()[:, :, None, None], shape)
    B = (D.T @ (W.ravel() * np.nan_to_num(x.ravel())))[:, None]
    used = np.diag(A) > 0
    ref = _min_norm_solution(A, B, used)
    diag = _split(np.diag(A)[:, None], effects)
    X, _, rel, AX = block_pcg(
        passes.product, _split(B, effects), [d[..., 0] for d in diag], rtol=1e-11, product=True,
        matvec_flat=passes.product_flat,
    )  # fmt: skip
    assert rel[0] <= 1e-11
    _same_solution(_join(X), ref, A, 1e-8)
    np.testing.assert_allclose(_join(AX), A @ _join(X), rtol=0, atol=1e-9 * np.abs(B).max())
