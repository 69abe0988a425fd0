"""The compiled evaluation kernel: one sweep per slab in a few numba loops (numpy + numba, no dask).

:func:`eval_chunk` has the signature and the packed output of
:func:`daskglm.kernels.eval_chunk` (the numpy reference), so the graph layer can map either
(``engine=``, :mod:`daskglm.engines`). Per slab of a chunk it

1. packs the full-grid covariates into an ``(F, cells)`` float64 matrix (converting float32
   and zeroing non-finite values in the same loop);
2. computes eta: the packed columns times their coefficients, plus the parts of eta on
   smaller grids (:meth:`~daskglm.contract.BlockContractor.linear_grids`, made once per
   chunk) and the offset, gathered by per-grid row offsets (stride 0 along the axes a grid
   lacks);
3. the family's ``f``, ``g``, ``h`` per cell (the compiled cell function of
   :mod:`daskglm.families_numba` where there is one, else the family's numpy
   ``derivatives``);
4. the reductions: ``X' w g`` and ``X' diag(w h) X`` as planned by
   :mod:`daskglm.sweep_plan` (dense products of the packed columns; scatter-adds onto the
   small grids), contracted with the small covariate arrays once per chunk.

Each step is its own short loop over the slab (kept in cache): one fused loop does not
vectorise, a few simple ones do. The cells of a slab are visited in C order as rows along the
last axis; a grid's cell for row ``r`` and position ``t`` is ``base[r] + t * s`` with ``s``
0 or 1.

The final pass (``final=True``: meat, deviance, separated cells) runs the numpy kernel: it
happens once per fit.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from . import kernels
from .kernels import ChunkData, _expand, _slabs, build_contractor, eval_packer
from .layout import Layout
from .sweep_plan import SweepPlan, grid_shape, make_plan, matrix_result, vector_result

__all__ = ["eval_chunk", "SLAB_CELLS"]

#: cells per slab of the compiled sweep (its few arrays stay in the L2 cache)
SLAB_CELLS = 16384

#: reassociation lets the sums vectorise; no finite-math assumption (NaN/inf stay honest)
_FM = {"reassoc", "contract", "nsz"}


def _jit(fn):
    return numba.njit(cache=True, nogil=True, fastmath=_FM)(fn)


# ------------------------------------------------------------------------ compiled loops
@_jit
def _pack(src, dst):  # pragma: no cover - compiled
    """dst[n] = src[n] as float64, 0 where it is not finite."""
    for n in range(src.shape[0]):
        v = np.float64(src[n])
        dst[n] = v if abs(v) < np.inf else 0.0


@_jit
def _pack_features(src, dst, row0):  # pragma: no cover - compiled
    """dst[row0 + c, n] = src[n, c] as float64, 0 where not finite."""
    n_cells, width = src.shape
    for c in range(width):
        row = dst[row0 + c]
        for n in range(n_cells):
            v = np.float64(src[n, c])
            row[n] = v if abs(v) < np.inf else 0.0


@_jit
def _linear(eta, XF, beta):  # pragma: no cover - compiled
    """eta = beta @ XF (zeros without columns)."""
    n = eta.shape[0]
    if XF.shape[0] == 0:
        for i in range(n):
            eta[i] = 0.0
        return
    b = beta[0]
    x = XF[0]
    for i in range(n):
        eta[i] = b * x[i]
    for f in range(1, XF.shape[0]):
        b = beta[f]
        x = XF[f]
        for i in range(n):
            eta[i] += b * x[i]


@_jit
def _add_grid(eta, vals, base, s, L):  # pragma: no cover - compiled
    """eta[r L + t] += vals[base[r] + t s]."""
    for r in range(base.shape[0]):
        b = base[r]
        o = r * L
        if s == 0:
            v = vals[b]
            for t in range(L):
                eta[o + t] += v
        else:
            for t in range(L):
                eta[o + t] += vals[b + t]


@_jit
def _dots(XF, v, out):  # pragma: no cover - compiled
    """out[f] += sum_n XF[f, n] v[n]."""
    for f in range(XF.shape[0]):
        x = XF[f]
        acc = 0.0
        for i in range(v.shape[0]):
            acc += x[i] * v[i]
        out[f] += acc


@_jit
def _gram(XF, v, out, tmp):  # pragma: no cover - compiled
    """out[f, g] += sum_n XF[f, n] XF[g, n] v[n] for g <= f."""
    n = v.shape[0]
    for f in range(XF.shape[0]):
        x = XF[f]
        for i in range(n):
            tmp[i] = x[i] * v[i]
        for g in range(f + 1):
            z = XF[g]
            acc = 0.0
            for i in range(n):
                acc += tmp[i] * z[i]
            out[f, g] += acc


@_jit
def _scatter(v, acc, base, s, L):  # pragma: no cover - compiled
    """acc[base[r] + t s] += v[r L + t]."""
    for r in range(base.shape[0]):
        b = base[r]
        o = r * L
        if s == 0:
            tot = 0.0
            for t in range(L):
                tot += v[o + t]
            acc[b] += tot
        else:
            for t in range(L):
                acc[b + t] += v[o + t]


@_jit
def _scatter_cols(v, X, xbase, xs, acc, base, s, L):  # pragma: no cover - compiled
    """acc[c, base[r] + t s] += v[r L + t] X[c, xbase[r] + t xs] for every column c."""
    R = base.shape[0]
    C = X.shape[0]
    if xs == 0 and s == 0:
        for r in range(R):
            o = r * L
            tot = 0.0
            for t in range(L):
                tot += v[o + t]
            for c in range(C):
                acc[c, base[r]] += X[c, xbase[r]] * tot
    elif xs == 0:
        for c in range(C):
            a = acc[c]
            x = X[c]
            for r in range(R):
                xv = x[xbase[r]]
                b = base[r]
                o = r * L
                for t in range(L):
                    a[b + t] += xv * v[o + t]
    elif s == 0:
        for c in range(C):
            a = acc[c]
            x = X[c]
            for r in range(R):
                xb = xbase[r]
                o = r * L
                tot = 0.0
                for t in range(L):
                    tot += x[xb + t] * v[o + t]
                a[base[r]] += tot
    else:
        for c in range(C):
            a = acc[c]
            x = X[c]
            for r in range(R):
                xb = xbase[r]
                b = base[r]
                o = r * L
                for t in range(L):
                    a[b + t] += x[xb + t] * v[o + t]


# ------------------------------------------------------------------------ grid indexing
def _rows(gshape: tuple[int, ...], slab_shape: tuple[int, ...], ax: int | None, start: int):
    """Row offsets of a grid for a slab: ``(base, s)`` with the grid's flat index of the
    slab's cell ``(r, t)`` (row ``r`` of the C-ordered outer axes, ``t`` along the last) being
    ``base[r] + t * s``. ``gshape`` is the grid's expanded shape in chunk coordinates (1
    off its axes); the slab starts at ``start`` along ``ax`` (``None``: the whole chunk)."""
    m = len(slab_shape)
    strides = [0] * m
    step = 1
    for d in reversed(range(m)):
        if gshape[d] != 1:
            strides[d] = step
        step *= gshape[d]
    base = np.zeros(slab_shape[:-1], dtype=np.int64)
    for d in range(m - 1):
        if strides[d]:
            idx = np.arange(slab_shape[d], dtype=np.int64) + (start if d == ax else 0)
            base += (idx * strides[d]).reshape([-1 if e == d else 1 for e in range(m - 1)])
    base = base.reshape(-1)
    if ax == m - 1 and strides[m - 1]:
        base = base + start * strides[m - 1]
    return base, strides[m - 1]


@lru_cache(maxsize=64)
def _plan(layout: Layout) -> SweepPlan | None:
    return make_plan(layout)


def _plan_for(layout: Layout) -> SweepPlan | None:
    try:
        return _plan(layout)
    except TypeError:  # an unhashable layout (a family with unhashable options)
        return make_plan(layout)


# ------------------------------------------------------------------------ the kernel
class _Sums:
    """The chunk-level accumulations of one evaluation sweep."""

    def __init__(self, plan: SweepPlan, con, shape: tuple[int, ...], hessian: bool, extra: bool):
        F = plan.n_full
        self.ll = self.f_t = self.f_tt = self.dev = 0.0
        self.g_full = np.zeros(F)
        self.g_grids = {U: np.zeros(grid_shape(U, shape)) for U in plan.vec_grids}
        self.hessian = hessian
        self.extra = extra and hessian
        if hessian:
            self.ff = np.zeros((F, F))
            self.fx = {U: np.zeros((F,) + grid_shape(U, shape)) for U in plan.vec_grids}
            self.c = {U: np.zeros(grid_shape(U, shape)) for U in plan.c_grids}
            self.t = {
                s: {U: np.zeros((con.sizes[s],) + grid_shape(U, shape)) for U in targets}
                for s, targets in plan.comp
            }
        if self.extra:
            self.e_full = np.zeros(F)
            self.e_grids = {U: np.zeros(grid_shape(U, shape)) for U in plan.vec_grids}


def eval_chunk(
    layout: Layout, params: np.ndarray, hessian: bool, final: bool, *arrays: np.ndarray
) -> np.ndarray:
    """Log-likelihood, gradient and (optionally) Hessian of one chunk at ``params``: the
    compiled sweep. Same arguments and packed output as :func:`daskglm.kernels.eval_chunk`,
    which it calls for ``final=True`` and for layouts the sweep does not cover."""
    plan = None if final else _plan_for(layout)
    if plan is None:
        return kernels.eval_chunk(layout, params, hessian, final, *arrays)
    fam = layout.family
    nb, extra = layout.n_beta, fam.n_extra > 0
    params = np.asarray(params, dtype=np.float64)
    beta, theta = params[:nb], params[nb:]
    beta_full = np.ascontiguousarray(beta[plan.colpos])
    shape = tuple(np.shape(arrays[layout.role("y")[0]]))
    with np.errstate(all="ignore"):
        local = [_expand(a, s, shape) for a, s in zip(arrays, layout.args, strict=True)]
        con = build_contractor(layout, local, shape)
        grids = [(g.reshape(-1), g.shape) for g in con.linear_grids(beta)]
        gathered = {s: (con.X[s].reshape(con.sizes[s], -1), con.X[s].shape[1:]) for s, _ in plan.comp}
        sums = _Sums(plan, con, shape, hessian, extra)
        F = plan.n_full
        for (ax, start, _stop), slab_arrays in _slabs(layout, arrays, shape, SLAB_CELLS):
            _sweep(layout, plan, slab_arrays, ax, start, beta_full, theta, grids, gathered, sums, F)
        out: dict[str, object] = {"ll": sums.ll, "dev": sums.dev}
        grad = vector_result(plan, con, sums.g_full, sums.g_grids)
        out["grad"] = np.concatenate([grad, [sums.f_t]]) if extra else grad
        if hessian:
            P = layout.n_params
            M = np.zeros((P, P))
            M[:nb, :nb] = matrix_result(plan, con, sums.ff, sums.fx, sums.c, sums.t)
            if extra:
                v = vector_result(plan, con, sums.e_full, sums.e_grids)
                M[:nb, nb] = v
                M[nb, :nb] = v
                M[nb, nb] = sums.f_tt
            out["hess"] = M
        vec = eval_packer(layout, hessian=hessian, final=False).pack(out)
    return vec.reshape((1,) * len(shape) + (-1,))


def _sweep(layout, plan, slab_arrays, ax, start, beta_full, theta, grids, gathered, sums: _Sums, F) -> None:
    """One slab: eta, the family, the reductions (adds into ``sums``)."""
    fam = layout.family
    d = ChunkData(layout, slab_arrays)
    sshape = d.shape
    n = int(np.prod(sshape))
    if n == 0:
        return
    L = sshape[-1]
    # 1. the packed full-grid columns
    XF = np.empty((F, n))
    row = 0
    for src, width, feat in plan.sources:
        a = np.asarray(d.local[src])
        if feat:
            _pack_features(np.ascontiguousarray(a).reshape(n, width), XF, row)
        else:
            _pack(np.ascontiguousarray(a).reshape(-1), XF[row])
        row += width
    # 2. eta
    eta = np.empty(n)
    _linear(eta, XF, beta_full)
    for vals, gshape in grids:
        base, s = _rows(gshape, sshape, ax, start)
        _add_grid(eta, vals, base, s, L)
    off = d.offset
    if np.ndim(off):
        off = np.ascontiguousarray(off, dtype=np.float64)
        base, s = _rows(off.shape, sshape, None, 0)
        _add_grid(eta, off.reshape(-1), base, s, L)
    elif off:
        eta += off
    if not d.all_used:
        eta[~d.used.reshape(-1)] = 0.0
    # 3. the family
    y = d.y.reshape(-1)
    aux = {k: np.broadcast_to(v, sshape).reshape(-1) for k, v in d.aux.items()}
    der = fam.derivatives(y, eta, aux, theta)
    w = None if d.unit_weights else np.broadcast_to(d.w, sshape).reshape(-1)

    def weighted(a):
        return a if w is None else w * a

    sums.ll += float(weighted(der.f).sum())
    wg = np.ascontiguousarray(weighted(der.g))
    # 4. the reductions
    rows = {U: _rows(acc.shape, sshape, ax, start) for U, acc in sums.g_grids.items()}
    _dots(XF, wg, sums.g_full)
    for U, acc in sums.g_grids.items():
        _scatter(wg, acc.reshape(-1), *rows[U], L)
    if layout.family.n_extra:
        sums.f_t += float(weighted(der.f_t).sum())
        sums.dev += float(weighted(fam.unit_deviance(y, eta, aux, theta)).sum())
    if not sums.hessian:
        return
    wh = np.ascontiguousarray(weighted(der.h))
    tmp = np.empty(n)
    _gram(XF, wh, sums.ff, tmp)
    full_rows = np.arange(0, n, L, dtype=np.int64)
    for U, acc in sums.fx.items() if F else ():
        _scatter_cols(wh, XF, full_rows, 1, acc.reshape(F, -1), *rows[U], L)
    for acc in sums.c.values():
        _scatter(wh, acc.reshape(-1), *_rows(acc.shape, sshape, ax, start), L)
    for s, targets in sums.t.items():
        X, xshape = gathered[s]
        xbase, xs = _rows(xshape, sshape, ax, start)
        for acc in targets.values():
            flat = acc.reshape(acc.shape[0], -1)
            _scatter_cols(wh, X, xbase, xs, flat, *_rows(acc.shape[1:], sshape, ax, start), L)
    if sums.extra:
        we = np.ascontiguousarray(weighted(der.f_et))
        sums.f_tt += float(weighted(der.f_tt).sum())
        _dots(XF, we, sums.e_full)
        for U, acc in sums.e_grids.items():
            _scatter(we, acc.reshape(-1), *rows[U], L)
