"""What the compiled per-chunk sweep accumulates, and the once-per-chunk contractions after it.

The compiled evaluation kernel (:mod:`daskglm.kernels.chunk_numba`) never forms the design. It sweeps
each slab of a chunk once and accumulates a few cell arrays onto small grids; this module
(numpy only) says which, and turns the accumulated grids into the chunk's gradient and Hessian
with the small covariate arrays (:class:`~daskglm.kernels.contract.BlockContractor` of the chunk).

The blocks split into the *full-grid* blocks (spanning every panel axis; their ``F`` columns
are packed slab by slab into an ``(F, cells)`` matrix) and the *small* ones (the intercept,
(i), (i, j), ...). For ``X' v`` and ``X' diag(c) X``:

* full x full: the ``F (F + 1) / 2`` products ``sum_n x_f x_g c`` directly in the sweep;
* full x small b: ``x_f c`` accumulated onto b's grid in the sweep (for every full column),
  then one product with b's small array per chunk;
* small a x small b whose axes together span less than the full grid: ``c`` accumulated
  onto their union U in the sweep, then contracted with ``X_a`` and ``X_b`` per chunk (the
  batched-GEMM or the product route of :class:`~daskglm.kernels.contract.BlockContractor`);
* small a x small b whose axes together span the full grid ((i, j) with (i, k), (i, j) with
  k, ...): ``c`` times a's columns (gathered from a's small grid) accumulated onto b's grid
  in the sweep, then one product with ``X_b`` per chunk.

Grids nested in others are merged: a block whose axes are inside another target's is
reduced from that target's accumulation after the sweep (:func:`~daskglm.kernels.contract.partial_sum`),
so the sweep only writes the maximal grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import contract
from .contract import BlockContractor, _inner
from .layout import Layout

__all__ = ["SweepPlan", "make_plan", "grid_shape", "partial_sum", "vector_result", "matrix_result"]


def _maximal(sets) -> list[frozenset]:
    """The distinct sets not strictly inside another one, in a fixed order (largest first)."""
    sets = set(sets)
    out = [s for s in sets if not any(s < t for t in sets)]
    return sorted(out, key=lambda s: (-len(s), sorted(s)))


@dataclass(frozen=True)
class SweepPlan:
    """The accumulations of one layout's evaluation sweep (independent of the chunk's shape).

    Attributes
    ----------
    ndim : int
        Number of panel axes.
    axes : tuple of frozenset
        Each block's panel axes.
    full : tuple of int
        The full-grid blocks (their columns, in order, are the rows of the packed matrix).
    sources : tuple of (int, int, bool)
        The arguments whose columns the packed matrix holds: (argument index, width, has a
        feature axis), in block-column order.
    colpos : ndarray of int
        The parameter index of each packed column.
    small : tuple of int
        The other blocks.
    vec_grids : tuple of frozenset
        Grids ``v`` (a gradient-type array) and every full column times ``c`` are accumulated
        on: the maximal axes of the small blocks.
    c_grids : tuple of frozenset
        Grids ``c`` is accumulated on: the maximal unions (short of the full grid) of pairs of
        small blocks.
    comp : tuple of (int, tuple of frozenset)
        For pairs of small blocks spanning the full grid together: the block whose gathered
        columns times ``c`` are accumulated, and the (maximal) grids they go onto.
    comp_pairs : tuple of (int, int)
        Those pairs as (gathered block, other block).
    small_pairs : tuple of (int, int)
        The pairs of small blocks whose union is short of the full grid (``a <= b``).
    """

    ndim: int
    axes: tuple
    full: tuple
    sources: tuple
    colpos: np.ndarray
    small: tuple
    vec_grids: tuple
    c_grids: tuple
    comp: tuple
    comp_pairs: tuple
    small_pairs: tuple

    @property
    def n_full(self) -> int:
        return int(self.colpos.size)


#: what one column costs the sweep per cell, accumulated onto a grid along whose rows it varies
#: (a read-modify-write of the grid row per cell) against one it does not (a sum per row held in
#: a register): loads and stores of the same slab, measured ~0.2 against ~0.06 ns/cell
_RMW_COST, _ROW_SUM_COST = 3, 1


def _gathered_first(a: int, b: int, axes: tuple, sizes: list, last: int) -> tuple[int, int]:
    """For a pair of small blocks spanning the full grid together: (the block whose columns are
    gathered, the block onto whose grid they are accumulated). The sweep's rows run along the
    last axis, so a target grid without it takes one sum per row (cheap) and one with it a
    read-modify-write at every cell: the cheaper of the two ways, else the smaller block gathered,
    else onto the grid with the leading axis (consecutive rows share its rows: they stay in cache)."""

    def cost(s: int, t: int) -> int:
        return sizes[s] * (_RMW_COST if last in axes[t] else _ROW_SUM_COST)

    if cost(a, b) != cost(b, a):
        return (a, b) if cost(a, b) < cost(b, a) else (b, a)
    if sizes[a] != sizes[b]:
        return (a, b) if sizes[a] < sizes[b] else (b, a)
    return (b, a) if 0 in axes[a] and 0 not in axes[b] else (a, b)


def make_plan(layout: Layout) -> SweepPlan | None:
    """The sweep's plan for ``layout``, or ``None`` where the compiled sweep does not apply
    (a panel with no axes, or a full-grid block with an argument off some axis)."""
    m = layout.ndim
    if m == 0:
        return None
    every = frozenset(range(m))
    axes = tuple(frozenset(b.axes) for b in layout.blocks)
    full, small, sources, colpos = [], [], [], []
    for k, (block, sl) in enumerate(zip(layout.blocks, layout.block_slices, strict=True)):
        if axes[k] == every and not block.intercept:
            for src in block.sources:
                spec = layout.args[src]
                if frozenset(spec.axes) != every:
                    return None
                sources.append((src, spec.width, spec.n_features is not None))
            full.append(k)
            colpos.extend(range(sl.start, sl.stop))
        else:
            small.append(k)
    sizes = [b.size for b in layout.blocks]
    vec_grids = _maximal(axes[k] for k in small)
    c_sets, comp_sets, comp_pairs, small_pairs = [], {}, [], []
    for i, a in enumerate(small):
        for b in small[i:]:
            union = axes[a] | axes[b]
            if union != every:
                c_sets.append(union)
                small_pairs.append((a, b))
            else:
                s, t = _gathered_first(a, b, axes, sizes, m - 1)
                comp_sets.setdefault(s, []).append(axes[t])
                comp_pairs.append((s, t))
    comp = tuple((s, tuple(_maximal(sets))) for s, sets in comp_sets.items())
    return SweepPlan(
        ndim=m,
        axes=axes,
        full=tuple(full),
        sources=tuple(sources),
        colpos=np.asarray(colpos, dtype=np.intp),
        small=tuple(small),
        vec_grids=tuple(vec_grids),
        c_grids=tuple(_maximal(c_sets)),
        comp=comp,
        comp_pairs=tuple(comp_pairs),
        small_pairs=tuple(small_pairs),
    )


def partial_sum(cache: dict, keep: frozenset, lead: int = 0) -> np.ndarray:
    """:func:`daskglm.kernels.contract.partial_sum` with ``ndarray.sum``: the accumulated grids are
    small (a chunk's grids off the full one), where numpy's sum beats the BLAS route."""
    return contract.partial_sum(cache, keep, lead, total=_ndarray_sum)


def _ndarray_sum(src: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return src.sum(axis=axes, keepdims=True)


def grid_shape(axes: frozenset, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The expanded shape of a grid on ``axes`` of a chunk of ``shape`` (1 off its axes)."""
    return tuple(n if d in axes else 1 for d, n in enumerate(shape))


def _positions(plan: SweepPlan, con: BlockContractor) -> tuple[dict, np.ndarray]:
    """Each small block's slice in *plan order* (the packed full-grid columns first, then the
    small blocks' columns) and the parameter index of every position in that order."""
    pos, start, order = {}, plan.n_full, [plan.colpos]
    for k in plan.small:
        pos[k] = slice(start, start + con.sizes[k])
        order.append(np.arange(con.offsets[k], con.offsets[k + 1]))
        start += con.sizes[k]
    return pos, np.concatenate(order).astype(np.intp)


def vector_result(plan: SweepPlan, con: BlockContractor, full_part: np.ndarray, acc: dict) -> np.ndarray:
    """``X' v`` of a chunk from the sweep's sums: ``full_part`` (the packed columns times
    ``v``) and ``acc`` (``v`` accumulated onto each of ``plan.vec_grids``)."""
    out = np.zeros(con.n)
    out[plan.colpos] = full_part
    cache = dict(acc)
    for k in sorted(plan.small, key=lambda k: -len(plan.axes[k])):
        r = partial_sum(cache, plan.axes[k])
        out[con.offsets[k] : con.offsets[k + 1]] = con.flat[k] @ r.reshape(-1)
    return out


def matrix_result(
    plan: SweepPlan,
    con: BlockContractor,
    ff: np.ndarray,
    acc_fx: dict,
    acc_c: dict,
    acc_t: dict,
) -> np.ndarray:
    """``X' diag(c) X`` of a chunk from the sweep's sums.

    ``ff``: the lower triangle of the packed columns' products; ``acc_fx``: the packed columns
    times ``c`` on each of ``plan.vec_grids`` (``(F,) +`` grid); ``acc_c``: ``c`` on each of
    ``plan.c_grids``; ``acc_t``: for each gathered block ``s`` of ``plan.comp``, its columns
    times ``c`` on each of its grids (``(p_s,) +`` grid).
    """
    pos, order = _positions(plan, con)
    M = np.zeros((con.n, con.n))  # in plan order

    def put(a, b, block):
        M[a, b] += block
        M[b, a] += block.T

    F = plan.n_full
    full = slice(0, F)
    if F:
        M[full, full] = np.tril(ff) + np.tril(ff, -1).T
        cache = dict(acc_fx)
        for b in sorted(plan.small, key=lambda k: -len(plan.axes[k])):
            R = partial_sum(cache, plan.axes[b], lead=1)
            put(full, pos[b], _inner(R.reshape(F, -1), con.flat[b]))
    cache_c = dict(acc_c)
    products: dict = {}
    for a0, b0 in sorted(plan.small_pairs, key=lambda p: -len(plan.axes[p[0]] | plan.axes[p[1]])):
        union = plan.axes[a0] | plan.axes[b0]
        cu = partial_sum(cache_c, union)
        a, b = con._order_pair(a0, b0)
        if con._batched(a, b):
            block = con.batched_block(a, b, cu)
        else:
            key = (a, union)
            if key not in products:
                products[key] = {union: con.X[a] * cu[None]}
            R = partial_sum(products[key], plan.axes[b], lead=1)
            block = _inner(R.reshape(R.shape[0], -1), con.flat[b])
        if a == b:
            M[pos[a], pos[a]] += block
        else:
            put(pos[a], pos[b], block)
    caches_t = {s: dict(acc_t[s]) for s in acc_t}
    for s, t in plan.comp_pairs:
        R = partial_sum(caches_t[s], plan.axes[t], lead=1)
        put(pos[s], pos[t], _inner(R.reshape(R.shape[0], -1), con.flat[t]))
    out = np.empty_like(M)
    out[np.ix_(order, order)] = M
    return out
