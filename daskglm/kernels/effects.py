"""Fixed effects on a grid: per-chunk numpy kernels and the level-space algebra (no dask).

An effect on panel axes ``S`` has one coefficient per cell of the ``S`` grid (a *level*). Its
columns in the design are the identity over ``S``, so everything it needs is a reduction of a
cell array onto ``S`` (DESIGN.md section 6):

* ``grad_e = (w g) reduced onto S_e``; ``A_ee = diag((-w h) reduced onto S_e)``;
* ``B_e = (-w h X) reduced onto S_e`` (the effect x covariate block of the information);
* ``A v`` (the effects x effects block times level arrays ``v``): spread ``v`` onto the cells,
  multiply by ``-w h``, reduce back onto every effect's grid.

A chunk sees only the levels of its own coordinate ranges, so the kernels take and return
*local* level arrays (the chunk's part of each effect grid) that the graph layer cuts and
adds up. The client-side solver :func:`block_pcg` solves ``A Z = R`` for several right-hand
sides at once with conjugate gradients preconditioned by the diagonal of ``A``, one product
(one pass over the stored ``-w h``) per iteration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import effects_numba
from .chunk import ChunkData, _block_matrix, _expand, _quadratic
from .contract import partial_sum
from .layout import Layout

__all__ = [
    "Effect",
    "LevelArrays",
    "fe_eval_chunk",
    "fe_matvec_chunk",
    "fe_counts_chunk",
    "fe_scores_chunk",
    "slabbed",
    "block_pcg",
]


@dataclass(frozen=True)
class Effect:
    """A fixed effect: one coefficient per cell of the grid of some panel dims.

    Attributes
    ----------
    dims : tuple of str
        The panel dims it spans, in panel order.
    axes : tuple of int
        Their positions among the panel axes.
    shape : tuple of int
        The size of its grid.
    """

    dims: tuple[str, ...]
    axes: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        """fixest's name: ``"exporter^year"``."""
        return "^".join(self.dims)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


#: one array per effect, each on that effect's grid (optionally with a trailing column axis)
LevelArrays = list


def _reduce(cache: dict, axes: tuple[int, ...], ndim: int, lead: int = 0) -> np.ndarray:
    """A cached cell array summed onto ``axes``, compacted to their extents (leading axes kept)."""
    out = partial_sum(cache, frozenset(axes), lead)
    keep = list(range(lead)) + [lead + a for a in axes]
    return out.reshape([out.shape[d] for d in keep])


def _spread(local: np.ndarray, axes: tuple[int, ...], shape: tuple[int, ...], trailing: int = 0):
    """A local level array viewed with the chunk's number of axes (size 1 off ``axes``)."""
    target = [1] * len(shape)
    for k, a in enumerate(axes):
        target[a] = local.shape[k]
    return local.reshape(target + list(local.shape[len(axes) :]) if trailing else target)


def _fe_data(layout: Layout, effects: Sequence[Effect], arrays: tuple, levels: tuple) -> tuple:
    """The chunk's :class:`ChunkData` with cells of dropped levels masked, and the effects'
    part of eta. ``levels`` are the chunk's local effect values; NaN marks a dropped level."""
    (iy,) = layout.role("y")
    shape = np.shape(arrays[iy])
    fe_sum = np.zeros(shape)
    for eff, a in zip(effects, levels, strict=True):
        fe_sum = fe_sum + _spread(np.asarray(a, dtype=np.float64), eff.axes, shape)
    ok = np.isfinite(fe_sum)
    arrays = list(arrays)
    if not ok.all():
        arrays[iy] = np.where(ok, np.asarray(arrays[iy], dtype=np.float64), np.nan)
    d = ChunkData(layout, tuple(arrays))
    return d, np.where(d.used, fe_sum, 0.0)


def _fe_state(layout: Layout, effects: Sequence[Effect], params: np.ndarray, levels: tuple, arrays: tuple):
    """The chunk's data, eta (effects included) and the family's derivatives at ``params``."""
    nb = layout.n_beta
    d, fe_sum = _fe_data(layout, effects, arrays, levels)
    eta = d.eta(params[:nb]) + fe_sum
    return d, eta, layout.family.derivatives(d.y, eta, d.aux, params[nb:])


def fe_counts_chunk(layout: Layout, effects: Sequence[Effect], levels: tuple, *arrays) -> list:
    """Per effect and local level: used cells and the family's degeneracy sums.

    Returns one array per effect of shape ``local grid + (3 + n_stats,)``: the number of used
    cells, their summed weight, their saturated log-likelihood (0 where it depends on a
    parameter), then the weighted sum of each of the family's
    :meth:`perfect_fit_stats` (a level where one of them sums to 0 has its estimate at infinity).
    """
    with np.errstate(all="ignore"):
        d, _ = _fe_data(layout, effects, arrays, levels)
        sat = layout.family.saturated(d.y, d.aux)
        sat = np.zeros(d.shape) if sat is None else np.where(d.used, d.w * sat, 0.0)
        stats = [d.used.astype(np.float64), d.w, sat] + [
            np.broadcast_to(d.w * s, d.shape) for s in layout.family.perfect_fit_stats(d.y, d.aux)
        ]
        cell = np.stack([np.broadcast_to(s, d.shape) for s in stats])
        cache = {frozenset(range(len(d.shape))): np.ascontiguousarray(cell)}
        return [np.moveaxis(_reduce(cache, e.axes, len(d.shape), lead=1), 0, -1) for e in effects]


def fe_eval_chunk(
    layout: Layout,
    effects: Sequence[Effect],
    params: np.ndarray,
    hessian: bool,
    final: bool,
    levels: tuple,
    *arrays,
) -> dict:
    """One chunk of an evaluation pass of a model with fixed effects.

    Returns a dict with ``ll``, ``dev``, ``grad`` (the covariates' and extra parameters'),
    ``hess`` (their block, with ``hessian``), ``n_separated``, with ``final`` the
    log-likelihood constant ``ll_const`` of the used cells, and per effect (lists)
    ``grad_fe`` (``w g`` on the local grid), ``diag_fe`` (``-w h``), ``cross_fe``
    (``-w h X`` and NB2's ``-w f_et``: local grid + (P,)), and ``W``: the cell array ``-w h``
    that later products with the effects' block read.
    """
    fam = layout.family
    nb = layout.n_beta
    with np.errstate(all="ignore"):
        d, eta, der = _fe_state(layout, effects, params, levels, arrays)
        shape, m, theta = d.shape, len(d.shape), params[nb:]
        out: dict = {}
        out["ll"] = float(d.weighted(der.f).sum())
        if final or fam.n_extra:  # else the client has it from the saturated log-likelihood
            out["dev"] = float(d.weighted(fam.unit_deviance(d.y, eta, d.aux, theta)).sum())
        if final:
            sep = fam.separated(d.y, eta, d.aux)
            out["n_separated"] = 0 if sep is None else int(np.count_nonzero(sep & d.used))
            out["ll_const"] = float(d.weighted(np.where(d.used, fam.constant(d.y, d.aux), 0.0)).sum())
        wg = np.broadcast_to(d.w * der.g, shape)
        con = d.contractor
        grad = con.vector(wg)
        extra = fam.n_extra > 0
        out["grad"] = np.concatenate([grad, [d.weighted(der.f_t).sum()]]) if extra else grad
        gcache = {frozenset(range(m)): wg}
        out["grad_fe"] = [_reduce(gcache, e.axes, m) for e in effects]
        if not hessian:
            return out
        wh = np.broadcast_to(d.w * der.h, shape)
        bt = con.vector(d.weighted(der.f_et)) if extra else None
        tt = float(d.weighted(der.f_tt).sum()) if extra else 0.0
        out["hess"] = _quadratic(
            _Done(con.matrix(wh)), None if bt is None else _Done(bt), tt, nb, layout.n_params
        )
        W = np.ascontiguousarray(-wh)
        wcache = {frozenset(range(m)): W}
        out["diag_fe"] = [_reduce(wcache, e.axes, m) for e in effects]
        fet = np.broadcast_to(-d.w * der.f_et, shape) if extra else None
        out["cross_fe"] = _cross(wcache, con, layout, fet, effects, m)
        out["W"] = W
    return out


class _Done:
    """An already contracted result dressed as an accumulator (for :func:`_quadratic`)."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _cross(wcache: dict, con, layout: Layout, fet, effects: Sequence[Effect], m: int) -> list:
    """Per effect: ``(-w h X) reduced onto its grid`` (local grid + (P,)).

    The product of ``-w h`` (reduced onto the union of the block's and the effect's axes) with
    a block is made once per union and shared by the effects with that union (for a full-grid
    block: one product for every effect), and so are its partial sums.
    """
    prods: dict = {}
    cols: list[list] = [[] for _ in effects]
    for k, block in enumerate(layout.blocks):
        X = con.X[k]  # the contractor's (built once per chunk)
        for j, e in enumerate(effects):
            union = frozenset(e.axes) | frozenset(block.axes)
            cache = prods.get((k, union))
            if cache is None:
                cache = prods[k, union] = {frozenset(range(m)): partial_sum(wcache, union)[None] * X}
            cols[j].append(_reduce(cache, e.axes, m, lead=1))
    if fet is not None:
        fcache = {frozenset(range(m)): fet}
        for j, e in enumerate(effects):
            cols[j].append(_reduce(fcache, e.axes, m)[None])
    return [np.moveaxis(np.concatenate(c, axis=0), 0, -1) for c in cols]


def fe_matvec_chunk(effects: Sequence[Effect], W: np.ndarray, *local_v, engine: str | None = None) -> list:
    """``A v`` on one chunk: spread every effect's local ``v`` (local grid + (k,)) onto the
    cells, weight by ``W = -w h``, reduce onto each effect's grid.

    ``engine``: ``"numba"`` (one compiled loop over the cells, :mod:`daskglm.kernels.effects_numba`)
    or ``"numpy"`` (the reference); default :data:`daskglm.kernels.effects_numba.ENGINE`.
    """
    if (engine or effects_numba.ENGINE) == "numba":
        return effects_numba.matvec(tuple(e.axes for e in effects), W, local_v)
    shape, m = W.shape, W.ndim
    k = local_v[0].shape[-1]
    u = np.zeros((k,) + shape)
    for e, v in zip(effects, local_v, strict=True):
        u += np.moveaxis(_spread(v, e.axes, shape, trailing=1), -1, 0)
    u *= W
    cache = {frozenset(range(m)): u}
    return [np.moveaxis(_reduce(cache, e.axes, m, lead=1), 0, -1) for e in effects]


def fe_scores_chunk(
    layout: Layout,
    effects: Sequence[Effect],
    params: np.ndarray,
    keeps: Sequence[tuple[int, ...]],
    levels: tuple,
    proj: tuple,
    *arrays,
) -> dict:
    """Scores of the covariates with the effects partialled out, on one chunk.

    The score of cell n is ``u_n = g_n (x_n - sum_e Z_e[s_e(n)])`` (NB2's log-alpha:
    ``f_t - g sum_e Z_e``), ``Z_e`` the effects' projection of the covariates (``proj``, local
    grids + (P,)). Returns ``meat = sum_n w u u'`` and, for each entry of ``keeps`` (cluster
    axes), ``sum w u`` per cluster (local grid + (P,)) and the used cells per cluster.
    """
    fam = layout.family
    nb = layout.n_beta
    with np.errstate(all="ignore"):
        d, eta, der = _fe_state(layout, effects, params, levels, arrays)
        shape, m = d.shape, len(d.shape)
        local = [_expand(a, s, shape) for a, s in zip(arrays, layout.args, strict=True)]
        P = layout.n_params
        cols = np.zeros((P,) + shape)
        pos = 0
        for b in layout.blocks:
            X = _block_matrix(layout, local, shape, b, False)
            cols[pos : pos + b.size] = X
            pos += b.size
        for e, z in zip(effects, proj, strict=True):
            cols -= np.moveaxis(_spread(np.asarray(z), e.axes, shape, trailing=1), -1, 0)
        g = np.where(d.used, der.g, 0.0)
        u = cols * g
        if fam.n_extra:
            # NB2's log-alpha has no covariate column: cols[nb] is -sum_e Z_e, the effects'
            # correction, and the raw score is f_t
            u[nb] = np.where(d.used, der.f_t, 0.0) + g * cols[nb]
        flat = u.reshape(P, -1)
        w = np.broadcast_to(d.w, shape).reshape(-1)
        out = {"meat": (flat * w) @ flat.T}
        wu = u * np.broadcast_to(d.w, shape)
        cache = {frozenset(range(m)): wu}
        ucache = {frozenset(range(m)): np.broadcast_to(d.used.astype(np.float64), shape)}
        out["clusters"] = [
            (np.moveaxis(_reduce(cache, keep, m, lead=1), 0, -1), _reduce(ucache, keep, m)) for keep in keeps
        ]
    return out


# ------------------------------------------------------------------------------ slabs
#: a chunk's cells are processed in slabs of about this many along its first axis, so that
#: the per-cell temporaries stay in the CPU caches (3-4x faster than whole 2**19-cell chunks)
SLAB_CELLS = 65536


def _merge(parts: list, along: bool | list):
    """Combine the slabs' results: concatenate along the first axis what spans it, sum the rest.

    ``along`` says, for a list of per-effect (or per-clustering) arrays, which of them span the
    first panel axis."""
    if isinstance(parts[0], np.ndarray) and along is True:
        return np.concatenate(parts, axis=0)
    return sum(parts[1:], parts[0]) if not isinstance(parts[0], np.ndarray) else np.sum(parts, axis=0)


def slabbed(kind: str, layout: Layout, effects: Sequence[Effect], *args):
    """Run a chunk kernel slab by slab along the chunk's first axis and merge the results.

    ``kind`` is ``"eval"`` (:func:`fe_eval_chunk`; ``args = (params, hessian, final, levels,
    *arrays)``), ``"counts"`` (:func:`fe_counts_chunk`; ``(levels, *arrays)``) or
    ``"scores"`` (:func:`fe_scores_chunk`; ``(params, keeps, levels, proj, *arrays)``).
    """
    if kind == "eval" and effects_numba.ENGINE == "numba":
        from . import chunk_numba as kernels_numba  # the compiled sweep: one call per chunk, its own slabs

        return kernels_numba.fe_eval_chunk(layout, effects, *args)
    n_lead = {"eval": 3, "counts": 0, "scores": 2}[kind]
    lead, (levels, *rest) = args[:n_lead], args[n_lead:]
    proj, arrays = (rest[0], rest[1:]) if kind == "scores" else (None, rest)
    func = {"eval": fe_eval_chunk, "counts": fe_counts_chunk, "scores": fe_scores_chunk}[kind]
    shape = np.shape(arrays[layout.role("y")[0]])
    per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(SLAB_CELLS // max(per_row, 1), 1)
    if not shape or step >= shape[0]:
        return func(layout, effects, *lead, levels, *rest)
    on_first = [0 in e.axes for e in effects]

    def cut(a, axes, sl):
        return a[sl] if axes and axes[0] == 0 else a

    outs = []
    for start in range(0, shape[0], step):
        sl = slice(start, start + step)
        lv = tuple(cut(a, e.axes, sl) for a, e in zip(levels, effects, strict=True))
        ar = [cut(a, spec.axes, sl) for a, spec in zip(arrays, layout.args, strict=True)]
        if kind == "scores":
            pj = tuple(cut(a, e.axes, sl) for a, e in zip(proj, effects, strict=True))
            outs.append(func(layout, effects, *lead, lv, pj, *ar))
        else:
            outs.append(func(layout, effects, *lead, lv, *ar))
    if kind == "counts":
        return [_merge([o[j] for o in outs], on_first[j]) for j in range(len(effects))]
    merged = {}
    for key in outs[0]:
        vals = [o[key] for o in outs]
        if key == "W":
            merged[key] = np.concatenate(vals, axis=0)
        elif key in ("grad_fe", "diag_fe", "cross_fe"):
            merged[key] = [_merge([v[j] for v in vals], on_first[j]) for j in range(len(effects))]
        elif key == "clusters":
            keeps = lead[1]
            merged[key] = [
                tuple(_merge([v[j][q] for v in vals], bool(keeps[j]) and keeps[j][0] == 0) for q in range(2))
                for j in range(len(keeps))
            ]
        else:
            merged[key] = sum(vals[1:], vals[0])
    return merged


# ------------------------------------------------------------------------------ client side
#: a column of the conjugate-gradient solve stops when its best residual has not fallen by 10%
#: for this many iterations (finite precision has reached its floor, e.g. a right-hand side
#: that is rounding noise and so not exactly in the range of the singular matrix)
STALL_ITERATIONS = 50


class _Flat:
    """The effects' level arrays (grid + (k,) each) as one ``(k, levels)`` array and back:
    the layout of the compiled product (a column's levels contiguous)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.shapes = [a.shape[:-1] for a in arrays]
        sizes = [int(np.prod(s)) for s in self.shapes]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)

    def join(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        k = arrays[0].shape[-1]
        return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, k) for a in arrays]).T.copy()

    def split(self, flat: np.ndarray) -> LevelArrays:
        """Views of ``flat`` (k, levels) as the effects' grids + (k,)."""
        k = flat.shape[0]
        return [
            flat[:, a:b].T.reshape(s + (k,))
            for a, b, s in zip(self.bounds[:-1], self.bounds[1:], self.shapes, strict=True)
        ]


def _col_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise inner products of two (k, levels) arrays."""
    return np.einsum("kn,kn->k", a, b)


def block_pcg(
    matvec: Callable[[LevelArrays], LevelArrays],
    rhs: LevelArrays,
    diag: LevelArrays,
    x0: LevelArrays | None = None,
    rtol: float = 1e-12,
    max_iter: int = 2000,
    product: bool = False,
    matvec_flat: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple:
    """Solve ``A X = R`` column by column, all columns in lockstep (one product per step).

    Conjugate gradients preconditioned by ``diag(A)``. ``A`` is the effects' block of the
    information: symmetric positive semi-definite, singular when there are two or more
    effects (a constant can move between them), but ``R`` lies in its range, so CG converges
    to a solution; the covariates' Schur complement does not depend on which one.

    Parameters
    ----------
    matvec : callable
        ``V -> A V`` for level arrays with a trailing column axis (one pass over the data).
    rhs, diag : list of ndarray
        Per effect: right-hand sides (grid + (k,)) and ``diag(A)`` (grid); levels with a zero
        diagonal (no used cell) are left at 0.
    x0 : list of ndarray, optional
        Starting solution (warm start).
    rtol : float
        Stop when every column's residual norm is below ``rtol`` times its right-hand side's.
    max_iter : int
        At most this many products.
    product : bool
        Also return ``A X`` (per effect), from the iteration's own residual ``R - A X``
        (kept alongside ``X``; saves the product the caller would otherwise make).
    matvec_flat : callable, optional
        The same product on the effects' levels concatenated as one ``(k, levels)`` array
        (used instead of ``matvec`` when given: no splitting and joining per product).

    Returns
    -------
    X, iterations, relative residual of each column (and ``A X`` with ``product``)
    """
    flat = _Flat(rhs)
    n, k = int(flat.bounds[-1]), rhs[0].shape[-1]
    dg = np.concatenate([np.ravel(d) for d in diag])
    used = dg > 0
    inv = np.where(used, 1.0 / np.where(used, dg, 1.0), 0.0)
    drop_constants = _constant_shifts(flat.bounds, used)

    def apply(V: np.ndarray) -> np.ndarray:
        """``A V`` on the used levels (rounding on a level without cells is discarded)."""
        out = matvec_flat(V) if matvec_flat is not None else flat.join(matvec(flat.split(V)))
        out *= used
        return out

    # in exact arithmetic R is orthogonal to A's null space; rounding leaves a component there
    # (a gradient column near the optimum is all rounding), along which CG would drift
    B = drop_constants(flat.join(rhs) * used)
    bnorm = np.sqrt(_col_dot(B, B))
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    X = np.zeros((k, n))
    R = B.copy()
    if x0 is not None:
        X0 = flat.join(x0) * used
        R0 = B - apply(X0)
        # a warm start worse than zero (e.g. a gradient column that has shrunk as Newton
        # converged) would leave a residual floor far above its right-hand side: restart it
        warm = np.sqrt(_col_dot(R0, R0)) < bnorm
        X[warm] = X0[warm]
        R[warm] = R0[warm]
        del X0, R0
    # the client holds O(levels) vectors of (k, levels) each (1.2 M levels x 4 columns: 38 MB
    # a vector): B, X, R, Pd, A Pd (its buffer reused for the preconditioned residual once R
    # is updated) and the best iterate and residual, no more
    Pd = inv * R
    rz = _col_dot(R, Pd)
    it = 0
    rel = np.sqrt(_col_dot(R, R)) / bnorm
    best = rel.copy()
    # each column's best iterate and residual, kept apart from X and R only once some column's
    # iterate got worse than its best: until then the current ones are the best (two fewer
    # vectors of (k, levels) in the usual case, where every step improves every column)
    best_X: np.ndarray | None = None
    best_R: np.ndarray | None = None
    stalled = np.zeros(k, dtype=int)
    # a column stops on its own once converged or stalled (its recursive residual would go on
    # falling past what its iterate really achieves): it is frozen and left out of the products
    live = rel > rtol
    while it < max_iter and live.any():
        cols = np.flatnonzero(live)
        if cols.size == k:
            AP = apply(Pd)
        else:
            AP = np.zeros((k, n))
            AP[cols] = apply(Pd[cols])
        it += 1
        pap = _col_dot(Pd, AP)
        alpha = np.where(live & (pap > 0), rz / np.where(pap > 0, pap, 1.0), 0.0)
        for j in cols:  # column by column: no (k, levels) temporary
            X[j] += alpha[j] * Pd[j]
            R[j] -= alpha[j] * AP[j]
        rel = np.where(live, np.sqrt(_col_dot(R, R)) / bnorm, rel)
        better = live & (rel < best)
        worse = live & ~better
        if best_X is None and worse.any():
            # the iterate before this step was every column's best: kept, the worse columns'
            # step undone (equal to the iterate before it up to rounding)
            best_X = X.copy()
            best_R = R.copy() if product else None
            for j in np.flatnonzero(worse):
                best_X[j] -= alpha[j] * Pd[j]
                if best_R is not None:
                    best_R[j] += alpha[j] * AP[j]
        elif best_X is not None:
            for j in np.flatnonzero(better):
                best_X[j] = X[j]
                if best_R is not None:
                    best_R[j] = R[j]
        stalled = np.where(better & (rel < 0.9 * best), 0, stalled + 1)
        best = np.where(better, rel, best)
        live &= (rel > rtol) & (stalled < STALL_ITERATIONS)
        Zr = np.multiply(inv, R, out=AP)  # A Pd is no longer needed
        rz_new = _col_dot(R, Zr)
        beta = np.where(live & (rz > 0), rz_new / np.where(rz > 0, rz, 1.0), 0.0)[:, None]
        Pd *= beta
        Pd += Zr
        Pd *= live[:, None]
        rz = rz_new
        del AP, Zr
    if best_X is None:
        best_X, best_R = X, (R if product else None)
    del X, R, Pd
    out = flat.split(drop_constants(best_X))
    if not product:
        return out, it, best
    assert best_R is not None
    # A X = B - R (the constants dropped from X lie in A's null space: A X is unchanged)
    np.subtract(B, best_R, out=best_R)
    del B
    return out, it, best, flat.split(best_R)


def _constant_shifts(bounds: np.ndarray, used: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The projection that removes the constants the effects can trade among themselves.

    Every used cell has one level of each effect, so adding ``c`` to every level of effect
    ``k`` and subtracting it from every level of effect 0 leaves every cell's eta unchanged:
    ``n_k = 1_0 - 1_k`` (on the levels with used cells) lies in the null space of the effects'
    block ``A``. Returns ``V -> V - N (N'N)^-1 N'V`` for ``N = [n_1 .. n_{E-1}]``, column by
    column, on the effects' levels concatenated (``(k, levels)``; ``bounds`` delimit the
    effects, ``used`` marks the levels with cells): applied to the right-hand sides it
    removes the rounding that would make them inconsistent, applied to a solution it keeps
    the levels from drifting apart (which costs eta its digits) without changing ``A V``.
    """
    n_eff = len(bounds) - 1
    if n_eff < 2:
        return lambda v: v
    segments = list(zip(bounds[:-1], bounds[1:], strict=True))
    counts = np.array([max(float(used[a:b].sum()), 1.0) for a, b in segments])
    # N'N = diag(count_1..) + count_0 11', inverted by Sherman-Morrison (no solve)
    inv_d = 1.0 / counts[1:, None]
    shrink = counts[0] / (1.0 + counts[0] * inv_d.sum())

    def project(v: np.ndarray) -> np.ndarray:
        v = v * used
        sums = np.stack([v[:, a:b].sum(axis=1) for a, b in segments])
        s = sums[0] - sums[1:]  # N'V, (E-1, k)
        coef = inv_d * s - inv_d * shrink * (inv_d * s).sum(axis=0)
        a, b = segments[0]
        v[:, a:b] -= coef.sum(axis=0)[:, None]
        for (a, b), c in zip(segments[1:], coef, strict=True):
            v[:, a:b] += c[:, None]
        v *= used
        return v

    return project
