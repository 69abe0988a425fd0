"""The compiled evaluation kernel: one sweep per slab in a few numba loops (numpy + numba, no dask).

:func:`eval_chunk` has the signature and the packed output of
:func:`daskglm.kernels.chunk.eval_chunk` (the numpy reference), so the graph layer can map either
(``engine=``, :mod:`daskglm.kernels.engines`). Per slab of a chunk it

1. packs the full-grid covariates into an ``(F, cells)`` float64 matrix (converting float32
   and zeroing non-finite values in the same loop);
2. computes eta: the packed columns times their coefficients, plus the parts of eta on
   smaller grids (:meth:`~daskglm.kernels.contract.BlockContractor.linear_grids`, made once per
   chunk) and the offset, gathered by per-grid row offsets (stride 0 along the axes a grid
   lacks);
3. the family's ``f``, ``g``, ``h`` per cell (the compiled cell function of
   :mod:`daskglm.kernels.families_numba` where there is one, else the family's numpy
   ``derivatives``);
4. the reductions: ``X' w g`` and ``X' diag(w h) X`` as planned by
   :mod:`daskglm.kernels.sweep_plan` (dense products of the packed columns; scatter-adds onto the
   small grids), contracted with the small covariate arrays once per chunk.

Each step is its own short loop over the slab (kept in cache): one fused loop does not
vectorise, a few simple ones do. The cells of a slab are visited in C order as rows along the
last axis; a grid's cell for row ``r`` and position ``t`` is ``base[r] + t * s`` with ``s``
0 or 1.

The final pass (``final=True``) adds the meat (the Hessian's accumulations with ``w g^2``
instead of ``w h``), the deviance and the separated cells (counted in numpy at the sweep's eta
by the family's own rule). Families without a compiled cell kernel run the numpy kernel.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

from . import chunk as kernels
from . import families_numba
from .chunk import _block_matrix, _expand, eval_packer
from .columns_numba import column_list
from .contract import BlockContractor
from .layout import Layout
from .sweep_plan import SweepPlan, grid_shape, make_plan, matrix_result, partial_sum, vector_result

__all__ = ["eval_chunk", "fe_eval_chunk", "setup_chunk", "SLAB_CELLS"]

#: cells per slab of the compiled sweep (its few arrays stay in the L2 cache)
SLAB_CELLS = 16384

#: the setup pass's counts and sums as the sweep accumulates them (``su``), then the domain rules
_SETUP_SUMS = (
    "n_candidate", "n_used", "neg_weights", "sw", "swy", "swy2", "swoff", "swyoff", "swd", "swm", "ll_const",
    "ll_sat", "inf_y",
)  # fmt: skip

#: reassociation lets the sums vectorise; no finite-math assumption (NaN/inf stay honest)
_FM = {"reassoc", "contract", "nsz"}


def _jit(fn):
    return numba.njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")(fn)


# ------------------------------------------------------------------------ compiled loops
# Row loops index views of the rows (``a[b : b + L]``), not ``a[b + t]``: with a signed offset
# numba must handle negative indices, which keeps the inner loops from vectorising.


@_jit
def _gather(dst, vals, base, s, L):  # pragma: no cover - compiled
    """dst[r L + t] = vals[base[r] + t s]."""
    for r in range(base.shape[0]):
        b = base[r]
        d = dst[r * L : r * L + L]
        if s == 0:
            v = vals[b]
            for t in range(L):
                d[t] = v
        else:
            g = vals[b : b + L]
            for t in range(L):
                d[t] = g[t]


@_jit
def _add_grid(eta, vals, base, s, L):  # pragma: no cover - compiled
    """eta[r L + t] += vals[base[r] + t s]."""
    for r in range(base.shape[0]):
        b = base[r]
        e = eta[r * L : r * L + L]
        if s == 0:
            v = vals[b]
            for t in range(L):
                e[t] += v
        else:
            g = vals[b : b + L]
            for t in range(L):
                e[t] += g[t]


@_jit
def _scatter(v, acc, base, s, L):  # pragma: no cover - compiled
    """acc[base[r] + t s] += v[r L + t]."""
    for r in range(base.shape[0]):
        b = base[r]
        vr = v[r * L : r * L + L]
        if s == 0:
            tot = 0.0
            for t in range(L):
                tot += vr[t]
            acc[b] += tot
        else:
            a = acc[b : b + L]
            for t in range(L):
                a[t] += vr[t]


@_jit
def _scatter_prod(v, x, xbase, xs, acc, base, s, L):  # pragma: no cover - compiled
    """acc[base[r] + t s] += v[r L + t] x[xbase[r] + t xs]."""
    R = base.shape[0]
    if xs == 0 and s == 0:
        for r in range(R):
            vr = v[r * L : r * L + L]
            tot = 0.0
            for t in range(L):
                tot += vr[t]
            acc[base[r]] += x[xbase[r]] * tot
    elif xs == 0:
        for r in range(R):
            xv = x[xbase[r]]
            b = base[r]
            a = acc[b : b + L]
            vr = v[r * L : r * L + L]
            for t in range(L):
                a[t] += xv * vr[t]
    elif s == 0:
        for r in range(R):
            xb = xbase[r]
            xr = x[xb : xb + L]
            vr = v[r * L : r * L + L]
            tot = 0.0
            for t in range(L):
                tot += xr[t] * vr[t]
            acc[base[r]] += tot
    else:
        for r in range(R):
            xb = xbase[r]
            b = base[r]
            xr = x[xb : xb + L]
            a = acc[b : b + L]
            vr = v[r * L : r * L + L]
            for t in range(L):
                a[t] += xr[t] * vr[t]


@_jit
def _scatter_prod2(v, x, x2, xbase, xs, acc, acc2, base, s, L):  # pragma: no cover - compiled
    """:func:`_scatter_prod` for two columns at once (one read of ``v`` per row)."""
    R = base.shape[0]
    if xs == 0 and s == 0:
        for r in range(R):
            vr = v[r * L : r * L + L]
            tot = 0.0
            for t in range(L):
                tot += vr[t]
            acc[base[r]] += x[xbase[r]] * tot
            acc2[base[r]] += x2[xbase[r]] * tot
    elif xs == 0:
        for r in range(R):
            xv = x[xbase[r]]
            xv2 = x2[xbase[r]]
            b = base[r]
            a = acc[b : b + L]
            a2 = acc2[b : b + L]
            vr = v[r * L : r * L + L]
            for t in range(L):
                a[t] += xv * vr[t]
                a2[t] += xv2 * vr[t]
    elif s == 0:
        for r in range(R):
            xb = xbase[r]
            xr = x[xb : xb + L]
            xr2 = x2[xb : xb + L]
            vr = v[r * L : r * L + L]
            tot = 0.0
            tot2 = 0.0
            for t in range(L):
                tot += xr[t] * vr[t]
                tot2 += xr2[t] * vr[t]
            acc[base[r]] += tot
            acc2[base[r]] += tot2
    else:
        for r in range(R):
            xb = xbase[r]
            b = base[r]
            xr = x[xb : xb + L]
            xr2 = x2[xb : xb + L]
            a = acc[b : b + L]
            a2 = acc2[b : b + L]
            vr = v[r * L : r * L + L]
            for t in range(L):
                a[t] += xr[t] * vr[t]
                a2[t] += xr2[t] * vr[t]


@_jit
def _scatter_prod4(v, x0, x1, x2, x3, xbase, xs, a0, a1, a2, a3, base, s, L):  # pragma: no cover - compiled
    """:func:`_scatter_prod` for four columns at once (one read of ``v`` and one pass over the
    slab's rows for four accumulations)."""
    R = base.shape[0]
    if xs == 0 and s == 0:
        for r in range(R):
            vr = v[r * L : r * L + L]
            tot = 0.0
            for t in range(L):
                tot += vr[t]
            xb, b = xbase[r], base[r]
            a0[b] += x0[xb] * tot
            a1[b] += x1[xb] * tot
            a2[b] += x2[xb] * tot
            a3[b] += x3[xb] * tot
    elif xs == 0:
        for r in range(R):
            xb, b = xbase[r], base[r]
            u0, u1, u2, u3 = x0[xb], x1[xb], x2[xb], x3[xb]
            c0, c1, c2, c3 = a0[b : b + L], a1[b : b + L], a2[b : b + L], a3[b : b + L]
            vr = v[r * L : r * L + L]
            for t in range(L):
                vt = vr[t]
                c0[t] += u0 * vt
                c1[t] += u1 * vt
                c2[t] += u2 * vt
                c3[t] += u3 * vt
    elif s == 0:
        for r in range(R):
            xb = xbase[r]
            y0, y1, y2, y3 = x0[xb : xb + L], x1[xb : xb + L], x2[xb : xb + L], x3[xb : xb + L]
            vr = v[r * L : r * L + L]
            t0 = t1 = t2 = t3 = 0.0
            for t in range(L):
                vt = vr[t]
                t0 += y0[t] * vt
                t1 += y1[t] * vt
                t2 += y2[t] * vt
                t3 += y3[t] * vt
            b = base[r]
            a0[b] += t0
            a1[b] += t1
            a2[b] += t2
            a3[b] += t3
    else:
        for r in range(R):
            xb, b = xbase[r], base[r]
            y0, y1, y2, y3 = x0[xb : xb + L], x1[xb : xb + L], x2[xb : xb + L], x3[xb : xb + L]
            c0, c1, c2, c3 = a0[b : b + L], a1[b : b + L], a2[b : b + L], a3[b : b + L]
            vr = v[r * L : r * L + L]
            for t in range(L):
                vt = vr[t]
                c0[t] += y0[t] * vt
                c1[t] += y1[t] * vt
                c2[t] += y2[t] * vt
                c3[t] += y3[t] * vt


@_jit
def _tri4(x0, x1, x2, x3, h, g, n):  # pragma: no cover - compiled
    """The 10 products ``sum x_p x_q h`` (q <= p) and the 4 ``sum x_p g`` of four columns in one
    pass (14 sums held in registers: each cell's values are loaded once)."""
    s00 = s10 = s11 = s20 = s21 = s22 = s30 = s31 = s32 = s33 = 0.0
    d0 = d1 = d2 = d3 = 0.0
    for i in range(n):
        a0, a1, a2, a3, hi, gi = x0[i], x1[i], x2[i], x3[i], h[i], g[i]
        t0, t1, t2, t3 = a0 * hi, a1 * hi, a2 * hi, a3 * hi
        s00 += t0 * a0
        s10 += t1 * a0
        s11 += t1 * a1
        s20 += t2 * a0
        s21 += t2 * a1
        s22 += t2 * a2
        s30 += t3 * a0
        s31 += t3 * a1
        s32 += t3 * a2
        s33 += t3 * a3
        d0 += a0 * gi
        d1 += a1 * gi
        d2 += a2 * gi
        d3 += a3 * gi
    return (s00, s10, s11, s20, s21, s22, s30, s31, s32, s33), (d0, d1, d2, d3)


@_jit
def _tile4(a0, a1, a2, a3, b0, b1, b2, b3, h, n):  # pragma: no cover - compiled
    """The 16 products ``sum a_p b_q h`` of two groups of four columns in one pass (row-major)."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
    for i in range(n):
        hi = h[i]
        t0, t1, t2, t3 = a0[i] * hi, a1[i] * hi, a2[i] * hi, a3[i] * hi
        c0, c1, c2, c3 = b0[i], b1[i], b2[i], b3[i]
        s00 += t0 * c0
        s01 += t0 * c1
        s02 += t0 * c2
        s03 += t0 * c3
        s10 += t1 * c0
        s11 += t1 * c1
        s12 += t1 * c2
        s13 += t1 * c3
        s20 += t2 * c0
        s21 += t2 * c1
        s22 += t2 * c2
        s23 += t2 * c3
        s30 += t3 * c0
        s31 += t3 * c1
        s32 += t3 * c2
        s33 += t3 * c3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)


@_jit
def _dots4(x0, x1, x2, x3, v, n):  # pragma: no cover - compiled
    """The 4 sums ``sum x_p v`` in one pass."""
    d0 = d1 = d2 = d3 = 0.0
    for i in range(n):
        vi = v[i]
        d0 += x0[i] * vi
        d1 += x1[i] * vi
        d2 += x2[i] * vi
        d3 += x3[i] * vi
    return d0, d1, d2, d3


@_jit
def _full_products(XF, F, h, g, ff, gout, n, hessian):  # pragma: no cover - compiled
    """``gout[f] += sum x_f g`` and, with ``hessian``, ``ff[f, q] += sum x_f x_q h`` (q <= f) of the
    packed columns, four at a time (``XF`` has zero rows up to a multiple of four)."""
    T = (F + 3) // 4
    for a in range(T):
        f0 = 4 * a
        x0, x1, x2, x3 = XF[f0], XF[f0 + 1], XF[f0 + 2], XF[f0 + 3]
        if hessian:
            tri, d = _tri4(x0, x1, x2, x3, h, g, n)
            k = 0
            for p in range(4):
                for q in range(p + 1):
                    if f0 + p < F:
                        ff[f0 + p, f0 + q] += tri[k]
                    k += 1
            for b in range(a):
                q0 = 4 * b
                s = _tile4(x0, x1, x2, x3, XF[q0], XF[q0 + 1], XF[q0 + 2], XF[q0 + 3], h, n)
                for p in range(4):
                    if f0 + p < F:
                        for q in range(4):
                            ff[f0 + p, q0 + q] += s[4 * p + q]
        else:
            d = _dots4(x0, x1, x2, x3, g, n)
        for p in range(4):
            if f0 + p < F:
                gout[f0 + p] += d[p]


@_jit
def _pack_linear(src, dst, eta, b, first):  # pragma: no cover - compiled
    """dst = src as float64, 0 where it is not finite; eta (=, if ``first``) += b dst. Returns
    the number of non-finite values."""
    n = src.shape[0]
    bad = 0
    if first:
        for i in range(n):
            v = np.float64(src[i])
            ok = abs(v) < np.inf
            v = v if ok else 0.0
            bad += 0 if ok else 1
            dst[i] = v
            eta[i] = b * v
    else:
        for i in range(n):
            v = np.float64(src[i])
            ok = abs(v) < np.inf
            v = v if ok else 0.0
            bad += 0 if ok else 1
            dst[i] = v
            eta[i] += b * v
    return bad


@_jit
def _pack4(s0, s1, s2, s3, d0, d1, d2, d3, eta, b0, b1, b2, b3, first, bad):  # pragma: no cover - compiled
    """:func:`_pack_linear` of four columns in one loop (eta read and written once, not four
    times); ``bad[0:4]`` += each column's number of non-finite values."""
    n = s0.shape[0]
    n0 = n1 = n2 = n3 = 0
    for i in range(n):
        v0, v1, v2, v3 = np.float64(s0[i]), np.float64(s1[i]), np.float64(s2[i]), np.float64(s3[i])
        k0, k1, k2, k3 = abs(v0) < np.inf, abs(v1) < np.inf, abs(v2) < np.inf, abs(v3) < np.inf
        v0 = v0 if k0 else 0.0
        v1 = v1 if k1 else 0.0
        v2 = v2 if k2 else 0.0
        v3 = v3 if k3 else 0.0
        n0 += 0 if k0 else 1
        n1 += 0 if k1 else 1
        n2 += 0 if k2 else 1
        n3 += 0 if k3 else 1
        d0[i] = v0
        d1[i] = v1
        d2[i] = v2
        d3[i] = v3
        e = b0 * v0 if first else eta[i] + b0 * v0
        eta[i] = ((e + b1 * v1) + b2 * v2) + b3 * v3
    bad[0] += n0
    bad[1] += n1
    bad[2] += n2
    bad[3] += n3


@_jit
def _mask(y, wb, weighted, drop, c0, safe_y, ub, yb):  # pragma: no cover - compiled
    """ub = the used cells (finite y, non-zero weight, not dropped), yb = y there (safe_y
    elsewhere); returns the number of unused cells, of cells that are not candidates
    (``ChunkData.candidate``: finite y and non-zero weight, before the drop) and of cells with
    an infinite y and a non-zero weight (an error unless ``missing="drop"``)."""
    n = y.shape[0]
    bad = 0
    not_cand = 0
    inf_y = 0
    has_drop = drop.shape[0] > 0
    for i in range(n):
        v = y[i]
        ok = abs(v) < np.inf
        infinite = abs(v) == np.inf
        if weighted:
            ok = ok & (wb[i] != 0.0)
            infinite = infinite & (wb[i] != 0.0)
        not_cand += 0 if ok else 1
        inf_y += 1 if infinite else 0
        if has_drop:
            ok = ok & (drop[c0 + i] == 0)
        ub[i] = ok
        yb[i] = v if ok else safe_y
        bad += 0 if ok else 1
    return bad, not_cand, inf_y


@_jit
def _moments(yb, wb, e, tb, eb, unit, n, su):  # pragma: no cover - compiled
    """The setup pass's weighted sums of a slab into ``su``: w, w y, w y^2, w exp(off),
    w y exp(off), w event, w trials (``e`` holds exp(off)) and the negative weights."""
    sw = 0.0
    swy = 0.0
    swy2 = 0.0
    swoff = 0.0
    swyoff = 0.0
    swd = 0.0
    swm = 0.0
    neg = 0
    for i in range(n):
        wi = 1.0 if unit else wb[i]
        wy = wi * yb[i]
        sw += wi
        swy += wy
        swy2 += wy * yb[i]
        swoff += wi * e[i]
        swyoff += wy * e[i]
        swd += wi * eb[i]
        swm += wi * tb[i]
        neg += 1 if wi < 0.0 else 0
    su[2] += neg
    su[3] += sw
    su[4] += swy
    su[5] += swy2
    su[6] += swoff
    su[7] += swyoff
    su[8] += swd
    su[9] += swm


@_jit
def _dot(x, v, n):  # pragma: no cover - compiled
    acc = 0.0
    for i in range(n):
        acc += x[i] * v[i]
    return acc


@_jit
def _sweep(
    code,
    theta,
    n_rows,
    extra,
    hessian,
    final,
    meat,
    setup,
    terms,
    lf_table,
    y,
    safe_y,
    L,
    slab_rows,
    seg,
    src,
    beta_full,
    B,
    S,
    GV,
    goff,
    ggrid,
    wgrid,
    WV,
    tgrid,
    TV,
    egrid,
    EV,
    drop,
    ops,
    XS,
    A,
    sums,
    su,
    nonfin,
    gfull,
    efull,
    ff,
    ffm,
    mfull,
    wh_out,
):  # pragma: no cover - compiled
    """The whole chunk, slab by slab (``slab_rows`` rows of ``L`` cells each, or segments of
    ``seg`` cells of rows longer than that).

    ``B[k, r]`` and ``S[k]``: grid ``k``'s index of row ``r``'s first cell and its step along
    the row. eta grids: values ``GV[goff[g]:goff[g + 1]]`` on grid ``ggrid[g]``; weights,
    trials, event: grid index (-1: none) and values. ``ops`` rows: (kind, which, grid, acc
    offset, acc size, columns, x grid, x offset, x size) with kind 0 ``acc += v``, 1 ``acc +=
    v x_full[c]``, 2 ``acc += v x_small[c]``; which 0: w g, 1: w h, 2: w f_et, 3: w g^2 (the
    meat), 4: w g f_t. ``sums``: w f, w f_t, w f_tt, w deviance, w f_t^2, the separated cells.
    With ``final`` also the meat's products (``ffm``, ``mfull``); ``wh_out`` (unless empty)
    receives ``w h`` at every cell; ``nonfin[f]`` counts packed column f's non-finite values.
    ``meat`` (final passes with the Hessian only): the meat's accumulations of ``w g^2``.

    ``setup``: the setup pass instead (no family derivatives, no gradient: ``w`` takes the
    place of ``w h``, so the Hessian's accumulations are the Gram's; eta is the offset) with
    the counts and sums of ``su`` (:data:`_SETUP_SUMS`, ``su[12]`` the cells with an infinite
    y). ``terms`` adds the family's setup terms into ``su[10:12]`` and the domain rules' counts
    into ``su[13:]`` (:func:`daskglm.kernels.families_numba.cell_setup`): 1 the constant only
    (at the final pass), 2 also the saturated f and the domain rules.
    """  # fmt: skip
    R = B.shape[1]
    F = len(src)
    L_row = L
    # rows longer than a slab are cut into segments of ``seg`` cells, one segment per slab
    nseg = 1 if L_row <= seg else (L_row + seg - 1) // seg
    maxn = slab_rows * L_row if nseg == 1 else seg
    yb = np.empty(maxn)
    wb = np.empty(maxn)
    ub = np.empty(maxn, dtype=np.bool_)
    eta = np.empty(maxn)
    tb = np.ones(maxn)
    eb = np.zeros(maxn)
    F4 = 4 * ((F + 3) // 4)  # zero rows up to a multiple of four (_full_products)
    XF = np.zeros((F4, maxn))
    gscratch = np.zeros(F4)
    st = np.empty((n_rows + 2, maxn))  # the family's rows, then w g^2 and w g f_t
    dev = np.empty(maxn)
    tmp = np.empty(maxn)
    cst = np.empty(maxn if terms else 0)  # the family's setup terms (cell_setup)
    sat = np.empty(maxn if terms == 2 else 0)
    row_starts = np.arange(slab_rows) * L_row
    Bs = np.empty((B.shape[0], 1), dtype=np.int64)
    n_slabs = (R + slab_rows - 1) // slab_rows if nseg == 1 else R * nseg
    for sl in range(n_slabs):
        if nseg == 1:
            r0 = sl * slab_rows
            r1 = min(r0 + slab_rows, R)
            L = L_row
            c0 = r0 * L_row
            ns = (r1 - r0) * L
            Bv = B[:, r0:r1]
            full_rows = row_starts[: r1 - r0]
        else:
            r0 = sl // nseg
            t0 = (sl % nseg) * seg
            L = min(seg, L_row - t0)
            c0 = r0 * L_row + t0
            ns = L
            for k in range(B.shape[0]):
                Bs[k, 0] = B[k, r0] + t0 * S[k]
            Bv = Bs[:, 0:1]
            full_rows = row_starts[:1]
        # the mask, y and the weights (as kernels.ChunkData)
        weighted = wgrid >= 0
        if weighted:
            _gather(wb, WV, Bv[wgrid], S[wgrid], L)
        bad, not_cand, inf_y = _mask(y[c0 : c0 + ns], wb, weighted, drop, c0, safe_y, ub, yb)
        unit = not weighted and bad == 0
        if bad:
            for i in range(ns):
                if weighted:
                    wb[i] = wb[i] if ub[i] else 0.0
                else:
                    wb[i] = 1.0 if ub[i] else 0.0
        if tgrid >= 0:
            _gather(tb, TV, Bv[tgrid], S[tgrid], L)
            if bad:
                for i in range(ns):
                    tb[i] = tb[i] if ub[i] else 1.0
        if egrid >= 0:
            _gather(eb, EV, Bv[egrid], S[egrid], L)
            if bad:
                for i in range(ns):
                    eb[i] = eb[i] if ub[i] else 0.0
        # the full-grid columns (packed as float64, 0 where not finite) and eta
        if F == 0:
            for i in range(ns):
                eta[i] = 0.0
        f = 0
        while f + 3 < F:  # four columns per loop
            c1 = c0 + ns
            b = beta_full
            _pack4(
                src[f][c0:c1], src[f + 1][c0:c1], src[f + 2][c0:c1], src[f + 3][c0:c1],
                XF[f], XF[f + 1], XF[f + 2], XF[f + 3], eta, b[f], b[f + 1], b[f + 2], b[f + 3], f == 0,
                nonfin[f : f + 4],
            )  # fmt: skip
            f += 4
        while f < F:
            nonfin[f] += _pack_linear(src[f][c0 : c0 + ns], XF[f], eta, beta_full[f], f == 0)
            f += 1
        for g in range(ggrid.shape[0]):
            k = ggrid[g]
            _add_grid(eta, GV[goff[g] : goff[g + 1]], Bv[k], S[k], L)
        if bad:
            for i in range(ns):
                eta[i] = eta[i] if ub[i] else 0.0
        if setup:  # counts, sums, the family's terms; w in the place of w h
            su[0] += ns - not_cand
            su[1] += ns - bad
            su[12] += inf_y
            families_numba.exp_array(eta[:ns], tmp[:ns])
            _moments(yb, wb, tmp, tb, eb, unit, ns, su)
            if terms:
                families_numba.cell_setup(
                    code, yb[:ns], tb[:ns], eb[:ns], ub[:ns], theta, lf_table, False, cst, sat, su[13:]
                )
                su[10] += _sum(cst, ns) if unit else _dot(cst, wb, ns)
                su[11] += _sum(sat, ns) if unit else _dot(sat, wb, ns)
            h_ = st[2]
            for i in range(ns):
                h_[i] = 1.0 if unit else wb[i]
        else:
            # the family, weighted in place
            if extra or final:  # with the unit deviance (NB2: in the same loop over the cells)
                families_numba.cell_stats_deviance(code, yb[:ns], eta[:ns], tb[:ns], eb[:ns], theta, st, dev)
            else:
                families_numba.cell_stats(code, yb[:ns], eta[:ns], tb[:ns], eb[:ns], theta, st)
            if final:
                sums[5] += families_numba.cell_separated(code, yb[:ns], eta[:ns], tb[:ns], eb[:ns], ub[:ns])
                if terms:
                    families_numba.cell_setup(
                        code, yb[:ns], tb[:ns], eb[:ns], ub[:ns], theta, lf_table, True, cst, sat, su[13:]
                    )
                    su[10] += _sum(cst, ns) if unit else _dot(cst, wb, ns)
                if meat:  # the meat's cell arrays, from the unweighted g (and f_t)
                    g_, m3 = st[1], st[n_rows]
                    for i in range(ns):
                        m3[i] = g_[i] * g_[i] if unit else wb[i] * g_[i] * g_[i]
                    if extra:
                        ft, m4 = st[3], st[n_rows + 1]
                        tt = 0.0
                        for i in range(ns):
                            wi = 1.0 if unit else wb[i]
                            m4[i] = wi * g_[i] * ft[i]
                            tt += wi * ft[i] * ft[i]
                        sums[4] += tt
            for q in range(n_rows):
                row = st[q]
                if not unit:
                    for i in range(ns):
                        row[i] *= wb[i]
            acc = 0.0
            row = st[0]
            for i in range(ns):
                acc += row[i]
            sums[0] += acc
            if wh_out.shape[0]:
                wo = wh_out[c0 : c0 + ns]
                h_ = st[2]
                for i in range(ns):
                    wo[i] = h_[i]
            if extra:
                sums[1] += _sum(st[3], ns)
                sums[2] += _sum(st[5], ns)
            if extra or final:
                sums[3] += _sum(dev, ns) if unit else _dot(dev, wb, ns)
        # the reductions
        if setup:  # the Gram only (the dots into scratch)
            _full_products(XF, F, st[2], st[2], ff, gscratch, ns, True)
        else:
            _full_products(XF, F, st[2], st[1], ff, gfull, ns, hessian)
        if hessian:
            if extra:
                _full_products(XF, F, st[4], st[4], ff, efull, ns, False)
            if meat:
                m4 = st[n_rows + 1] if extra else st[n_rows]
                _full_products(XF, F, st[n_rows], m4, ffm, mfull if extra else gscratch, ns, True)
        for o in range(ops.shape[0]):
            kind, which, grid, aoff, asize, ncols = (
                ops[o, 0],
                ops[o, 1],
                ops[o, 2],
                ops[o, 3],
                ops[o, 4],
                ops[o, 5],
            )
            v = (
                st[1]
                if which == 0
                else (st[2] if which == 1 else (st[4] if which == 2 else st[n_rows + which - 3]))
            )
            base = Bv[grid]
            s = S[grid]
            if kind == 0:
                _scatter(v, A[aoff : aoff + asize], base, s, L)
            elif kind == 1:
                c = 0
                while c + 3 < ncols:  # four columns per sweep of v
                    a = A[aoff + c * asize : aoff + (c + 4) * asize]
                    a_0, a_1 = a[:asize], a[asize : 2 * asize]
                    a_2, a_3 = a[2 * asize : 3 * asize], a[3 * asize :]
                    x_0, x_1, x_2, x_3 = XF[c], XF[c + 1], XF[c + 2], XF[c + 3]
                    _scatter_prod4(v, x_0, x_1, x_2, x_3, full_rows, 1, a_0, a_1, a_2, a_3, base, s, L)
                    c += 4
                while c + 1 < ncols:  # two columns per sweep of v
                    a = A[aoff + c * asize : aoff + (c + 1) * asize]
                    a2 = A[aoff + (c + 1) * asize : aoff + (c + 2) * asize]
                    _scatter_prod2(v, XF[c], XF[c + 1], full_rows, 1, a, a2, base, s, L)
                    c += 2
                if c < ncols:
                    a = A[aoff + c * asize : aoff + (c + 1) * asize]
                    _scatter_prod(v, XF[c], full_rows, 1, a, base, s, L)
            else:
                xgrid, xoff, xsize = ops[o, 6], ops[o, 7], ops[o, 8]
                xb = Bv[xgrid]
                xst = S[xgrid]
                c = 0
                while c + 3 < ncols:  # four columns per sweep of v
                    a = A[aoff + c * asize : aoff + (c + 4) * asize]
                    a_0, a_1 = a[:asize], a[asize : 2 * asize]
                    a_2, a_3 = a[2 * asize : 3 * asize], a[3 * asize :]
                    x = XS[xoff + c * xsize : xoff + (c + 4) * xsize]
                    x_0, x_1 = x[:xsize], x[xsize : 2 * xsize]
                    x_2, x_3 = x[2 * xsize : 3 * xsize], x[3 * xsize :]
                    _scatter_prod4(v, x_0, x_1, x_2, x_3, xb, xst, a_0, a_1, a_2, a_3, base, s, L)
                    c += 4
                while c + 1 < ncols:  # two columns per sweep of v
                    a = A[aoff + c * asize : aoff + (c + 1) * asize]
                    a2 = A[aoff + (c + 1) * asize : aoff + (c + 2) * asize]
                    x = XS[xoff + c * xsize : xoff + (c + 1) * xsize]
                    x2 = XS[xoff + (c + 1) * xsize : xoff + (c + 2) * xsize]
                    _scatter_prod2(v, x, x2, xb, S[xgrid], a, a2, base, s, L)
                    c += 2
                if c < ncols:
                    a = A[aoff + c * asize : aoff + (c + 1) * asize]
                    x = XS[xoff + c * xsize : xoff + (c + 1) * xsize]
                    _scatter_prod(v, x, xb, S[xgrid], a, base, s, L)


@_jit
def _sum(x, n):  # pragma: no cover - compiled
    acc = 0.0
    for i in range(n):
        acc += x[i]
    return acc


# ------------------------------------------------------------------------ grid indexing
@lru_cache(maxsize=256)
def _grid_rows(gshape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """A chunk-level grid's index of each row's first cell (rows: the chunk's cells in C order
    in runs along the last axis) and its step along the row (0 or 1). ``gshape`` is the grid's
    expanded shape (1 off its axes)."""
    m = len(shape)
    strides, step = [0] * m, 1
    for d in reversed(range(m)):
        if gshape[d] != 1:
            strides[d] = step
        step *= gshape[d]
    base = np.zeros(shape[:-1], dtype=np.int64)
    for d in range(m - 1):
        if strides[d]:
            idx = np.arange(shape[d], dtype=np.int64) * strides[d]
            base += idx.reshape([-1 if e == d else 1 for e in range(m - 1)])
    out = base.reshape(-1)
    out.flags.writeable = False
    return out, strides[-1]


@lru_cache(maxsize=64)
def _plan(layout: Layout) -> SweepPlan | None:
    return make_plan(layout)


def _plan_for(layout: Layout) -> SweepPlan | None:
    try:
        return _plan(layout)
    except TypeError:  # an unhashable layout (a family with unhashable options)
        return make_plan(layout)


# ------------------------------------------------------------------------ the kernel
@lru_cache(maxsize=1)
def _log_factorials() -> np.ndarray:
    """``log k!`` for the whole counts the setup terms look up (made once per process)."""
    return families_numba.log_factorial_table(families_numba.LOG_FACTORIAL_TABLE)


def _family_code(family) -> int | None:
    """The number of the family's compiled cell kernel (:attr:`CellKernel.code
    <daskglm.kernels.families_numba.CellKernel>`), or None where it has none."""
    kernel = families_numba.cell_kernel(family)
    return None if kernel is None or kernel.code < 0 else kernel.code


class _Grids:
    """The distinct grids of a chunk (by expanded shape) and their row maps ``B``, ``S``."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        #: the shape the rows are taken along: trailing axes of length 1 left out (a row of one
        #: cell per row would cost a loop per cell)
        keep = len(shape)
        while keep > 1 and shape[keep - 1] == 1:
            keep -= 1
        self.rshape = tuple(shape[:keep]) if shape else (1,)
        self.index: dict[tuple[int, ...], int] = {}

    def __call__(self, gshape: tuple[int, ...]) -> int:
        gshape = tuple(gshape)
        if gshape not in self.index:
            self.index[gshape] = len(self.index)
        return self.index[gshape]

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        rshape = self.rshape
        R = int(np.prod(rshape[:-1]))
        B = np.empty((max(len(self.index), 1), R), dtype=np.int64)
        S = np.zeros(max(len(self.index), 1), dtype=np.int64)
        rows = _grid_rows if R <= 2**16 else _grid_rows.__wrapped__  # cache only the small maps
        for gshape, k in self.index.items():
            B[k], S[k] = rows(tuple(gshape[: len(rshape)]) if gshape else (1,), rshape)
        return B, S


class _Accumulators:
    """Chunk-level accumulation grids laid out in one flat array, and the sweep's ops."""

    def __init__(self, grids: _Grids):
        self.grids = grids
        self.size = 0
        self.ops: list[tuple[int, ...]] = []
        self.views: list[tuple[int, int, tuple[int, ...]]] = []

    def add(self, kind: int, which: int, gshape, ncols: int = 1, x=(0, 0, 0)) -> int:
        """Reserve ``(ncols,) + gshape`` (``gshape`` alone for kind 0) and record its op; the
        number returned retrieves the grid after the sweep (:meth:`view`)."""
        gsize = int(np.prod(gshape))
        self.ops.append((kind, which, self.grids(gshape), self.size, gsize, ncols) + tuple(x))
        self.views.append((self.size, ncols, tuple(gshape), kind))
        self.size += ncols * gsize
        return len(self.views) - 1

    def view(self, A: np.ndarray, handle: int) -> np.ndarray:
        off, ncols, gshape, kind = self.views[handle]
        piece = A[off : off + ncols * int(np.prod(gshape))]
        return piece.reshape(gshape) if kind == 0 else piece.reshape((ncols,) + gshape)


def _contractor(layout: Layout, plan: SweepPlan, local: list, shape: tuple[int, ...]) -> BlockContractor:
    """The chunk's :class:`~daskglm.kernels.contract.BlockContractor` of the small blocks (the sweep
    packs the full-grid ones itself; they are never built here), without its pair plan."""
    full = set(plan.full)
    X = [
        None if k in full else _block_matrix(layout, local, shape, b, False)
        for k, b in enumerate(layout.blocks)
    ]
    sizes = [b.size for b in layout.blocks]
    return BlockContractor(X, [b.axes for b in layout.blocks], shape, sizes, {}, _plan=())


def _as_columns(layout: Layout, plan: SweepPlan, local: list, n: int):
    """The full-grid columns as 1-D contiguous arrays of one dtype (a numba typed list)."""
    cols = []
    for src, width, feat in plan.sources:
        a = np.asarray(local[src])
        if feat:
            cols += list(np.ascontiguousarray(a.reshape(n, width).T))
        else:
            cols.append(np.ascontiguousarray(a).reshape(-1))
    dtypes = {c.dtype for c in cols}
    dtype = np.float32 if dtypes == {np.dtype(np.float32)} else np.float64
    # a typed list of read-only arrays (the sweep only reads them; read-only inputs, such as
    # pandas' copy-on-write columns or memory maps, need no unsafe cast), made by cached
    # compiled functions: numba's own typed-list constructors compile afresh in every process
    return column_list(cols, dtype)


def eval_chunk(
    layout: Layout, params: np.ndarray, hessian: bool, final: bool, *arrays: np.ndarray, meat: bool = True
) -> np.ndarray:
    """Log-likelihood, gradient and (optionally) Hessian of one chunk at ``params``: the
    compiled sweep. Same arguments and packed output as :func:`daskglm.kernels.chunk.eval_chunk`,
    which it calls for families without a compiled cell kernel and for layouts the sweep does
    not cover. With ``final`` also the deviance, the meat and the separated cells (counted in
    numpy from the sweep's eta, by the family's own rule)."""
    plan = _plan_for(layout)
    code = None if plan is None else _family_code(layout.family)
    if code is None:
        return kernels.eval_chunk(layout, params, hessian, final, *arrays, meat=meat)
    meat = meat and final and hessian
    with np.errstate(all="ignore"):
        out = _evaluate(layout, plan, code, params, hessian, final, meat, arrays)
        vec = eval_packer(layout, hessian=hessian, final=final, meat=meat).pack(out)
    return vec.reshape((1,) * layout.ndim + (-1,))


def fe_eval_chunk(
    layout: Layout, effects, params: np.ndarray, hessian: bool, final: bool, levels: tuple, *arrays
):
    """:func:`daskglm.kernels.effects.fe_eval_chunk` by the compiled sweep (same arguments, same dict):
    the effects' level values enter eta as small grids (NaN, a dropped level, masks its cells),
    and their reductions (``w g``, ``w h``, ``w h`` times each block's columns and NB2's
    ``w f_et``, on each effect's grid) are more scatter-adds of the same sweep; ``W = -w h`` is
    written out at every cell."""
    plan = _plan_for(layout)
    code = None if plan is None else _family_code(layout.family)
    if code is None:
        return _effects_module().fe_eval_chunk(layout, effects, params, hessian, final, levels, *arrays)
    with np.errstate(all="ignore"):
        return _evaluate(layout, plan, code, params, hessian, final, False, arrays, effects, levels)


def setup_chunk(layout: Layout, *arrays: np.ndarray) -> dict | None:
    """The setup pass over one chunk in one compiled sweep: the fields of
    :func:`daskglm.kernels.chunk.setup_packer` except the bad-input and exposure counts, plus
    ``nonfinite`` (argument index -> the number of non-finite values the sweep met in a
    full-grid covariate's columns). ``None`` where the sweep does not apply (no plan, or a
    family without a compiled kernel): the caller runs the numpy path."""
    plan = _plan_for(layout)
    code = None if plan is None else _family_code(layout.family)
    if code is None:
        return None
    with np.errstate(all="ignore"):
        return _evaluate(
            layout, plan, code, np.zeros(layout.n_params), True, False, False, arrays, setup=True
        )


def _merge_grids(parts: list, n: int) -> list:
    """eta's grids with every grid whose axes lie inside another's (smaller than the chunk)
    added onto that one: the i and j parts onto the (i, j) part, say, so the sweep adds one
    grid per cell instead of three. Grids are in expanded shape (1 off their axes)."""

    def axes(g):
        return frozenset(d for d, k in enumerate(g.shape) if k > 1)

    kept: list = []
    for g in sorted(parts, key=lambda g: -len(axes(g))):
        into = next((k for k, h in enumerate(kept) if h.size < n and axes(g) <= axes(h)), None)
        if into is None:
            kept.append(g)
        else:
            kept[into] = kept[into] + g  # a new array: the parts may be views of the inputs
    return kept


def _setup_out(plan, con, accs, A, su, nonfin, ff, h_fx, h_c, h_t, has_trials: bool) -> dict:
    """The setup fields of the sweep's ``su`` and Gram accumulations (``w`` in the place of ``w h``)."""
    k = len(_SETUP_SUMS)
    out: dict[str, object] = dict(zip(_SETUP_SUMS, su[:k].tolist(), strict=True))
    if not has_trials:
        out["swm"] = 0.0  # ``ChunkData.aux`` has no trials: the sum is 0, not the sum of weights
    out["domain"] = su[k:].copy()

    def views(hs: dict) -> dict:
        return {U: accs.view(A, h) for U, h in hs.items()}

    pairs = {s: views(hs) for s, hs in h_t.items()}
    gram = matrix_result(plan, con, ff, views(h_fx), views(h_c), pairs)
    out["gram"] = gram
    counts: dict[int, int] = {}
    col = 0
    for src, width, _ in plan.sources:
        counts[src] = counts.get(src, 0) + int(nonfin[col : col + width].sum())
        col += width
    out["nonfinite"] = counts
    return out


def _effects_module():
    """:mod:`daskglm.kernels.effects` (imported on first use: it imports this module's package peers)."""
    from . import effects

    return effects


def _evaluate(
    layout: Layout,
    plan: SweepPlan,
    code: int,
    params: np.ndarray,
    hessian: bool,
    final: bool,
    meat: bool,
    arrays: tuple,
    effects=None,
    levels=None,
    setup: bool = False,
) -> dict:
    """One chunk through :func:`_sweep` and the once-per-chunk contractions: the statistics of
    :func:`eval_chunk` (``meat`` with the final pass's meat), with ``effects`` those of
    :func:`fe_eval_chunk`, with ``setup`` those of :func:`setup_chunk` (``params`` unused)."""
    fam = layout.family
    params = np.asarray(params, dtype=np.float64)
    nb, extra = layout.n_beta, fam.n_extra > 0 and not setup
    beta, theta = params[:nb], params[nb:]
    if setup:
        beta, theta, hessian, final = np.zeros(nb), np.zeros(0), True, False
    (iy,) = layout.role("y")
    shape = tuple(np.shape(arrays[iy]))
    n = int(np.prod(shape))
    m = len(shape)
    arrays = tuple(arrays)
    effects = list(effects or ())
    fe_parts = []
    if effects:
        for e, a in zip(effects, levels, strict=True):
            target = [1] * m
            for k, ax in enumerate(e.axes):
                target[ax] = np.shape(a)[k]
            fe_parts.append(np.asarray(a, dtype=np.float64).reshape(target))
        if not all(np.isfinite(a).all() for a in fe_parts):  # dropped levels: their cells unused
            ok = np.isfinite(sum(fe_parts[1:], fe_parts[0]))
            masked = list(arrays)
            masked[iy] = np.where(ok, np.asarray(arrays[iy], dtype=np.float64), np.nan)
            arrays = tuple(masked)
    local = [_expand(a, sp, shape) for a, sp in zip(arrays, layout.args, strict=True)]
    con = _contractor(layout, plan, local, shape)
    grids = _Grids(shape)
    # eta's small grids (none in the setup pass: eta is the offset), the offset and the effects' levels
    parts = [] if setup else list(con.linear_grids(beta))
    off = 0.0
    for k in layout.role("offset"):
        off = off + local[k].astype(np.float64, copy=False)
    for k in layout.role("exposure"):
        off = off + np.log(local[k].astype(np.float64, copy=False))
    if np.ndim(off):
        parts.append(np.asarray(off, dtype=np.float64))
    parts = _merge_grids(parts, n) + fe_parts
    ggrid = np.array([grids(g.shape) for g in parts], dtype=np.int64)
    GV = np.concatenate([np.ascontiguousarray(g).reshape(-1) for g in parts]) if parts else np.zeros(0)
    goff = np.concatenate([[0], np.cumsum([g.size for g in parts])]).astype(np.int64)

    def aux_grid(k):
        if k is None:
            return -1, np.zeros(0)
        a = np.ascontiguousarray(local[k], dtype=np.float64)
        return grids(a.shape), a.reshape(-1)

    iw = layout.role("weights")
    wgrid, WV = aux_grid(iw[0] if iw else None)
    tgrid, TV = aux_grid(layout.role("trials")[0] if "trials" in fam.aux_roles else None)
    egrid, EV = aux_grid(layout.role("event")[0] if "event" in fam.aux_roles else None)
    drop = np.zeros(0, dtype=np.uint8)
    if layout.missing == "drop":
        bad = np.zeros(shape, dtype=bool)
        for k, sp in enumerate(layout.args):
            if sp.role != "y":
                ok = np.isfinite(local[k])
                bad |= ~(ok.all(axis=-1) if sp.n_features is not None else ok)
        drop = bad.reshape(-1).astype(np.uint8)
    # the accumulations
    accs = _Accumulators(grids)
    F = plan.n_full
    XS_parts: list = []
    gathered: dict = {}

    def gather(s):
        """Where block ``s``'s columns sit among the gathered values: (grid, offset, size)."""
        if s not in gathered:
            X = np.ascontiguousarray(con.X[s])
            xoff = sum(p.size for p in XS_parts)
            XS_parts.append(X.reshape(-1))
            gathered[s] = (grids(X.shape[1:]), xoff, int(np.prod(X.shape[1:])))
        return gathered[s]

    h_vec = {} if setup else {U: accs.add(0, 0, grid_shape(U, shape)) for U in plan.vec_grids}
    if hessian:
        h_fx = {U: accs.add(1, 1, grid_shape(U, shape), F) for U in plan.vec_grids} if F else {}
        h_c = {U: accs.add(0, 1, grid_shape(U, shape)) for U in plan.c_grids}
        h_t = {s: {U: accs.add(2, 1, grid_shape(U, shape), con.sizes[s], gather(s)) for U in targets}
               for s, targets in plan.comp}  # fmt: skip
        if extra:
            h_e = {U: accs.add(0, 2, grid_shape(U, shape)) for U in plan.vec_grids}
        if meat:  # the meat: the Hessian's accumulations of w g^2 (and w g f_t)
            m_fx = {U: accs.add(1, 3, grid_shape(U, shape), F) for U in plan.vec_grids} if F else {}
            m_c = {U: accs.add(0, 3, grid_shape(U, shape)) for U in plan.c_grids}
            m_t = {s: {U: accs.add(2, 3, grid_shape(U, shape), con.sizes[s], gather(s)) for U in targets}
                   for s, targets in plan.comp}  # fmt: skip
            if extra:
                m_e = {U: accs.add(0, 4, grid_shape(U, shape)) for U in plan.vec_grids}
    # the effects' reductions
    every = frozenset(range(m))
    fe_g, fe_h, fe_full, fe_e, fe_union, fe_t = [], [], [], [], {}, []
    for e in effects:
        eg = grid_shape(frozenset(e.axes), shape)
        fe_g.append(accs.add(0, 0, eg))
        if not hessian:
            continue
        fe_h.append(accs.add(0, 1, eg))
        fe_full.append(accs.add(1, 1, eg, F) if F else None)
        fe_e.append(accs.add(0, 2, eg) if extra else None)
        t = {}
        for k in plan.small:
            union = frozenset(e.axes) | plan.axes[k]
            if union == every:
                t[k] = accs.add(2, 1, eg, con.sizes[k], gather(k))
            elif union not in fe_union:
                fe_union[union] = accs.add(0, 1, grid_shape(union, shape))
        fe_t.append(t)
    XS = np.concatenate(XS_parts) if XS_parts else np.zeros(0)
    B, S = grids.tables()
    ops = np.array(accs.ops, dtype=np.int64).reshape(-1, 9)
    A = np.zeros(accs.size)
    sums = np.zeros(6)
    su = np.zeros(len(_SETUP_SUMS) + max(1, len(fam.domain_rules())))
    nonfin = np.zeros(F, dtype=np.int64)
    gfull, efull, ff = np.zeros(F), np.zeros(F), np.zeros((F, F))
    ffm, mfull = np.zeros((F, F)), np.zeros(F)
    wh_out = np.zeros(n if effects and hessian else 0)
    kernel = families_numba.cell_kernel(fam)
    cell_theta = kernel.theta(theta)
    L = grids.rshape[-1]
    slab_rows = max(1, SLAB_CELLS // max(L, 1))
    y = np.ascontiguousarray(local[iy], dtype=np.float64).reshape(-1)
    src = _as_columns(layout, plan, local, n)
    terms = 2 if setup else (1 if final and effects else 0)
    n_rows = 3 if setup else kernel.n_rows
    if n:
        _sweep(
            code, cell_theta, n_rows, extra, hessian, final, meat, setup, terms, _log_factorials(), y,
            float(fam.safe_y), L, slab_rows, SLAB_CELLS, src, np.ascontiguousarray(beta[plan.colpos]), B,
            S, GV, goff, ggrid, wgrid, WV, tgrid, TV, egrid, EV, drop, ops, XS, A, sums, su, nonfin, gfull,
            efull, ff, ffm, mfull, wh_out,
        )  # fmt: skip
    if setup:
        return _setup_out(plan, con, accs, A, su, nonfin, ff, h_fx, h_c, h_t, tgrid >= 0)
    # the once-per-chunk contractions
    out: dict[str, object] = {"ll": sums[0]}
    if final or extra:
        out["dev"] = sums[3]
    grad = vector_result(plan, con, gfull, {U: accs.view(A, h) for U, h in h_vec.items()})
    out["grad"] = np.concatenate([grad, [sums[1]]]) if extra else grad
    P = layout.n_params

    def views(hs: dict) -> dict:
        return {U: accs.view(A, h) for U, h in hs.items()}

    def quadratic(full, fx, c, t, efull, e, tt) -> np.ndarray:
        """The P x P matrix of one accumulation (the Hessian's or the meat's), with NB2's row."""
        M = np.zeros((P, P))
        pairs = {s: views(hs) for s, hs in t.items()}
        M[:nb, :nb] = matrix_result(plan, con, full, views(fx), views(c), pairs)
        if extra:
            v = vector_result(plan, con, efull, views(e))
            M[:nb, nb] = v
            M[nb, :nb] = v
            M[nb, nb] = tt
        return M

    if hessian:
        out["hess"] = quadratic(ff, h_fx, h_c, h_t, efull, h_e if extra else None, sums[2])
        if meat:
            out["meat"] = quadratic(ffm, m_fx, m_c, m_t, mfull, m_e if extra else None, sums[4])
    if final:
        out["n_separated"] = int(sums[5])
        if effects:
            out["ll_const"] = float(su[_SETUP_SUMS.index("ll_const")])
    if effects:
        _effects_out(
            out, plan, con, accs, A, effects, shape, fe_g, fe_h, fe_full, fe_e, fe_union, fe_t, wh_out
        )
    return out


def _effects_out(out, plan, con, accs, A, effects, shape, fe_g, fe_h, fe_full, fe_e, fe_union, fe_t, wh_out):
    """The effects' statistics of :func:`fe_eval_chunk` from the sweep's grids (local grids,
    signs as :func:`daskglm.kernels.effects.fe_eval_chunk`)."""

    def compact(arr, axes, lead=0):
        keep = list(range(lead)) + [lead + a for a in axes]
        return arr.reshape([arr.shape[d] for d in keep])

    out["grad_fe"] = [compact(accs.view(A, h), e.axes).copy() for e, h in zip(effects, fe_g, strict=True)]
    if not fe_h:
        return
    out["diag_fe"] = [-compact(accs.view(A, h), e.axes) for e, h in zip(effects, fe_h, strict=True)]
    unions = {U: accs.view(A, h) for U, h in fe_union.items()}
    row_of = {int(p): r for r, p in enumerate(plan.colpos)}
    cross = []
    for j, e in enumerate(effects):
        eaxes = frozenset(e.axes)
        cols = []
        full = accs.view(A, fe_full[j]) if fe_full[j] is not None else None
        for k, block in enumerate(con.axes):
            if k in plan.full:
                rows = [row_of[p] for p in range(con.offsets[k], con.offsets[k + 1])]
                cols.append(-compact(full[rows], e.axes, lead=1))
            elif k in fe_t[j]:
                cols.append(-compact(accs.view(A, fe_t[j][k]), e.axes, lead=1))
            else:
                union = eaxes | block
                prod = {union: con.X[k] * unions[union][None]}
                cols.append(-compact(partial_sum(prod, eaxes, lead=1), e.axes, lead=1))
        if fe_e[j] is not None:
            cols.append(-compact(accs.view(A, fe_e[j]), e.axes)[None])
        cross.append(np.moveaxis(np.concatenate(cols, axis=0), 0, -1))
    out["cross_fe"] = cross
    out["W"] = np.negative(wh_out, out=wh_out).reshape(shape)  # in place: no second full-grid copy
