"""Dask graphs of the passes of a fixed-effects model (graph layer; see :mod:`daskglm.kernels.effects`).

A fixed effect's arrays live on its own grid, which the chunks of the panel cut into pieces:
each chunk task receives the piece of every level array that its coordinate ranges cover and
returns pieces, which are added into the effect grids. So a pass is one task per chunk and one
``dask.compute``.

On dask's threaded scheduler the client cuts the level arrays and adds the pieces, and so on a
cluster (:data:`~daskglm.graph.passes.PASS_COMPUTE` set) while the pieces of a pass take at most
:data:`TREE_MIN_BYTES`. Above that the client's bytes per pass are O(levels), not O(chunks x
pieces): a pass's level arrays go to the cluster once, as one task that every chunk
task depends on (the chunk tasks cut their pieces on the workers), and the chunks' results are
added on the workers by a tree of :data:`~daskglm.graph.passes.SPLIT_EVERY`-way additions of
*boxes* (a piece of an effect's grid and its offset; a node's box is the union of its children's),
so the client receives one set of level arrays per pass (:func:`_tree_reduce`).

The evaluation pass also leaves ``W = -w h`` of every chunk in the scheduler's memory (the
workers' on a cluster, the client process's on threads): the inner products with the effects'
block then read only ``W`` and level arrays, never the data again.
"""

from __future__ import annotations

import itertools
import operator
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import dask
import numpy as np

from ..kernels import effects_numba
from ..kernels.effects import Effect, fe_matvec_chunk, slabbed
from ..kernels.layout import Layout
from .passes import PASS_COMPUTE, SPLIT_EVERY, PassCounter, in_process, local_pool, run, threaded_here

__all__ = ["TREE_MIN_BYTES", "ChunkPlan", "FixedEffectPasses"]


@dataclass
class ChunkPlan:
    """The chunks of the full grid: their index ranges and each argument's dask block."""

    index: list[tuple[slice, ...]]
    blocks: list[list]

    @classmethod
    def build(cls, layout: Layout, arrays: list, chunks: tuple) -> ChunkPlan:
        delayed = [a.to_delayed(optimize_graph=False) for a in arrays]
        bounds = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
        index, blocks = [], []
        for pos in itertools.product(*(range(len(c)) for c in chunks)):
            index.append(tuple(slice(int(b[p]), int(b[p + 1])) for b, p in zip(bounds, pos, strict=True)))
            row = []
            for spec, d in zip(layout.args, delayed, strict=True):
                key = tuple(pos[a] for a in spec.axes) + ((0,) if spec.n_features is not None else ())
                row.append(d[key] if key else d.reshape(-1)[0] if d.ndim else d.item())
            blocks.append(row)
        return cls(index, blocks)


def _cut(effects: Sequence[Effect], arrays: list, index: tuple[slice, ...]) -> tuple:
    """Each effect's level array restricted to a chunk's coordinate ranges."""
    return tuple(a[tuple(index[ax] for ax in e.axes)] for e, a in zip(effects, arrays, strict=True))


def _gather(effects: Sequence[Effect], plan: ChunkPlan, parts: list, trailing: tuple = ()) -> list:
    """Add the chunks' local pieces into full effect grids."""
    out = [np.zeros(e.shape + trailing) for e in effects]
    for index, piece in zip(plan.index, parts, strict=True):
        for e, acc, p in zip(effects, out, piece, strict=True):
            acc[tuple(index[ax] for ax in e.axes)] += p
    return out


def _small(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "W"}


#: How a pass's per-chunk result is reduced: ``flatten(part) -> list`` of its values, and per
#: value either ``None`` (summed as a whole: scalars, covariate vectors and matrices) or
#: ``(axes, shape)``: a piece over the chunk's ranges of the panel axes ``axes`` of a grid of
#: ``shape`` (plus trailing axes), added into that grid.
Grids = tuple


def _flat_list(part) -> list:
    return list(part)


def _flat_keys(sum_keys: tuple, grid_keys: tuple, part: dict) -> list:
    return [part[k] for k in sum_keys] + [p for k in grid_keys for p in part[k]]


def _flat_scores(part: dict) -> list:
    return [part["meat"]] + [x for S, n in part["clusters"] for x in (S, n)]


def _reduce_local(plan: ChunkPlan, flatten, grids: Grids, parts: list) -> list:
    """The chunks' results reduced on this process, in chunk order: sums, and pieces added
    into zero grids (the additions of :func:`_gather`)."""
    flats = [flatten(p) for p in parts]
    out = []
    for s, g in enumerate(grids):
        if g is None:
            out.append(sum(f[s] for f in flats))
            continue
        axes, shape = g
        acc = np.zeros(shape + np.shape(flats[0][s])[len(axes) :])
        for index, f in zip(plan.index, flats, strict=True):
            acc[tuple(index[a] for a in axes)] += f[s]
        out.append(acc)
    return out


def _cut_call(func, effects: Sequence[Effect], index: tuple[slice, ...], shipped: tuple, *blk):
    """On a worker: ``func(*cuts, *blk)``, the cuts of the pass's level arrays ``shipped`` (a
    tuple of lists, one list per argument) to the chunk's ranges."""
    return func(*(_cut(effects, arrays, index) for arrays in shipped), *blk)


def _boxes(flatten, grids: Grids, index: tuple[slice, ...], part) -> list:
    """A chunk's result as boxes: ``(None, value)`` or ``(offset, piece)``."""
    out = []
    for g, v in zip(grids, flatten(part), strict=True):
        out.append((None, v) if g is None else (tuple(index[a].start for a in g[0]), np.asarray(v)))
    return out


def _cut_call_boxes(func, flatten, grids: Grids, effects, index, shipped: tuple, *blk) -> list:
    return _boxes(flatten, grids, index, _cut_call(func, effects, index, shipped, *blk))


def _add_boxes(*flats: list) -> list:
    """A tree node: the children's values summed, their boxes added into their union box."""
    out = []
    for slots in zip(*flats, strict=True):
        if slots[0][0] is None:
            total = slots[0][1]
            for _, v in slots[1:]:
                total = total + v
            out.append((None, total))
            continue
        nd = len(slots[0][0])
        lo = tuple(min(o[d] for o, _ in slots) for d in range(nd))
        hi = tuple(max(o[d] + a.shape[d] for o, a in slots) for d in range(nd))
        acc = np.zeros(tuple(b - a for b, a in zip(hi, lo, strict=True)) + slots[0][1].shape[nd:])
        for o, a in slots:
            acc[tuple(slice(o[d] - lo[d], o[d] - lo[d] + a.shape[d]) for d in range(nd))] += a
        out.append((lo, acc))
    return out


def _tree_reduce(leaves: list):
    """The tree of :func:`_add_boxes` over the chunks' boxes (delayed), groups of
    :data:`~daskglm.graph.passes.SPLIT_EVERY` in chunk order; one node at the root."""
    level = list(leaves)
    while True:
        groups = [level[g : g + SPLIT_EVERY] for g in range(0, len(level), SPLIT_EVERY)]
        level = [dask.delayed(_add_boxes, pure=False)(*group) for group in groups]
        if len(level) == 1:
            return level[0]


def _unbox(grids: Grids, boxes: list) -> list:
    """The root's boxes as whole values and full grids (on the client)."""
    out = []
    for g, (offset, v) in zip(grids, boxes, strict=True):
        if g is None:
            out.append(v)
            continue
        axes, shape = g
        if v.shape[: len(axes)] == shape:
            out.append(v)
            continue
        acc = np.zeros(shape + v.shape[len(axes) :])
        acc[tuple(slice(o, o + n) for o, n in zip(offset, v.shape, strict=False))] = v
        out.append(acc)
    return out


def _matvec(effects: Sequence[Effect], cut: tuple, W: np.ndarray) -> list:
    return fe_matvec_chunk(effects, W, *cut)


def _hold(*arrays) -> tuple:
    """The task that holds a pass's level arrays on the cluster."""
    return arrays


#: on a cluster a pass sends each chunk its pieces of the level arrays and adds the returned
#: pieces on the client, unless these would take more than this many bytes: then the level arrays
#: go to the cluster once and the pieces are added there (:meth:`FixedEffectPasses._run_cluster`),
#: which costs about three more scheduling hops a pass (at 9e6 cells in 36 chunks, 10.8 MB of
#: pieces per product pass, 0.16 s a product against 0.12 s; benchmarks/GRAVITY.md) but keeps the
#: client's bytes per pass at one set of level arrays (at 1e8 cells the pieces were 96 MB each way)
TREE_MIN_BYTES = 32e6

#: distributed warns about a graph larger than this (10 MB by default); a pass's level arrays
#: are sent in its graph once, on purpose (1.2 million levels x 4 vectors are 38 MB)
_LARGE_GRAPH = "distributed.admin.large-graph-warning-threshold"


class FixedEffectPasses:
    """The passes of a fixed-effects fit over one panel.

    Parameters
    ----------
    layout, arrays, chunks
        The panel's layout, aligned dask arrays and full-grid chunks.
    effects : sequence of Effect
    counter : PassCounter
        Counts every pass (``what`` = ``"fe-counts"``, ``"eval"``, ``"fe-product"``,
        ``"fe-scores"``).
    """

    def __init__(self, layout: Layout, arrays: list, chunks: tuple, effects, counter: PassCounter):
        self.layout = layout
        self.effects = list(effects)
        self.counter = counter
        self.plan = ChunkPlan.build(layout, arrays, chunks)
        self.arrays = list(arrays)
        #: the chunks' inputs as data for the passes without dask (see _local_blocks)
        self._blocks: list | None = None
        self._W: list | None = None
        #: the chunks' W as numpy arrays when the passes run on dask's threaded scheduler
        self._W_local: list | None = None
        #: per thread, its chunks' (W, row table) for the compiled in-process product
        self._groups: list | None = None
        #: the cells of every chunk's pieces of the effects' grids, summed
        self._piece_cells = sum(
            int(np.prod([ix[a].stop - ix[a].start for a in e.axes]))
            for ix in self.plan.index
            for e in self.effects
        )

    def _local_blocks(self) -> list | None:
        """Every chunk's inputs as data, when a pass would run on dask's threaded scheduler
        and every input chunk already is data (numpy, or persisted in this process): the
        passes then run on this process's threads without a dask graph (building and ordering
        one cost about 10 ms a pass); else None."""
        if not threaded_here():
            return None
        if self._blocks is None:
            # in process: the threaded scheduler by name (dask's lookup would import distributed)
            local = in_process(self.arrays)
            self._blocks = list(dask.compute(*self.plan.blocks, scheduler=dask.threaded.get)) if local else []
        return self._blocks or None

    def _tree_pays(self, width: int) -> bool:
        """Whether a pass on a cluster goes by :meth:`_run_cluster`: when the chunks' pieces of
        level arrays (``width`` values per level sent and received) would take more than
        :data:`TREE_MIN_BYTES` through the client."""
        return 8 * self._piece_cells * width > TREE_MIN_BYTES

    def _run(self, what: str, func, shipped: tuple, reduce: tuple, width: int, persist: bool = False) -> list:
        """One pass: ``func(*cuts of chunk c, *inputs of chunk c)`` for every chunk, where the
        cuts are those of each list of level arrays in ``shipped``; the results reduced by
        ``reduce = (flatten, grids)`` (see :data:`Grids`): a list of sums and full grids.
        ``width``: values per level sent and received (see :meth:`_tree_pays`)."""
        on_cluster = PASS_COMPUTE.get() is not None
        if on_cluster and self._tree_pays(width):
            return self._run_cluster(what, func, shipped, reduce, self.plan.blocks, persist)
        t0 = time.perf_counter()
        per_chunk = [tuple(_cut(self.effects, a, ix) for a in shipped) for ix in self.plan.index]
        local = self._local_blocks()
        if persist:
            # the previous W is let go first: one W in memory at a time. On dask's threaded
            # scheduler, results, W included, are in this process anyway, and the inner
            # products run here on the chunks' W without a dask pass each
            self._W, self._W_local, self._groups = None, None, None
        if local is not None:
            out = list(local_pool().map(lambda c: func(*c[0], *c[1]), zip(per_chunk, local, strict=True)))
        else:
            tasks = [
                dask.delayed(func, pure=False)(*extra, *blk)
                for extra, blk in zip(per_chunk, self.plan.blocks, strict=True)
            ]
            if persist and on_cluster:
                # keep only W on the workers, as keys of its own (the chunk results that hold
                # it are released once W and the small statistics are split off)
                n = len(tasks)
                held = dask.persist(
                    *[dask.delayed(operator.getitem, pure=False)(t, "W") for t in tasks],
                    *[dask.delayed(_small, pure=False)(t) for t in tasks],
                )
                self._W = list(held[:n])
                tasks = held[n:]
            out = list(run(None, what, *tasks, optimize=False))
        if persist and not on_cluster:
            self._W_local = [o.pop("W", None) for o in out]
            if any(w is None for w in self._W_local):
                self._W_local = None
        flat = _reduce_local(self.plan, *reduce, out)
        self.counter.record(what, time.perf_counter() - t0)
        return flat

    def _run_cluster(self, what: str, func, shipped: tuple, reduce: tuple, blocks: list, persist: bool):
        """:meth:`_run` on a cluster: the level arrays sent once (a task each list), cut by the
        chunk tasks on the workers, the results added there (:func:`_tree_reduce`); with
        ``persist``, every chunk's ``W`` kept on the workers as a key of its own."""
        t0 = time.perf_counter()
        flatten, grids = reduce
        nbytes = sum(int(np.asarray(a).nbytes) for arrays in shipped for a in arrays)
        limit = dask.utils.parse_bytes(dask.config.get(_LARGE_GRAPH, "10MB") or "10MB") + nbytes
        with dask.config.set({_LARGE_GRAPH: limit}):
            lv = tuple(dask.delayed(_hold, pure=False)(*arrays) for arrays in shipped)
            if persist:
                # keep only W on the workers, as keys of its own (the chunk results that hold
                # it are released once W and the boxes are split off), and let the previous
                # evaluation's W go before this one is made: one W in cluster memory
                self._W_local, self._W, self._groups = None, None, None
                raw = [
                    dask.delayed(_cut_call, pure=False)(func, self.effects, ix, lv, *blk)
                    for ix, blk in zip(self.plan.index, blocks, strict=True)
                ]
                n = len(raw)
                held = dask.persist(
                    *[dask.delayed(operator.getitem, pure=False)(t, "W") for t in raw],
                    *[
                        dask.delayed(_boxes, pure=False)(flatten, grids, ix, t)
                        for ix, t in zip(self.plan.index, raw, strict=True)
                    ],
                )
                self._W, leaves = list(held[:n]), list(held[n:])
            else:
                call = dask.delayed(_cut_call_boxes, pure=False)
                leaves = [
                    call(func, flatten, grids, self.effects, ix, lv, *blk)
                    for ix, blk in zip(self.plan.index, blocks, strict=True)
                ]
            (boxes,) = run(None, what, _tree_reduce(leaves), optimize=False)
        self.counter.record(what, time.perf_counter() - t0)
        return _unbox(grids, boxes)

    def _grids(self) -> tuple:
        return tuple((e.axes, e.shape) for e in self.effects)

    def counts(self, levels: list) -> list:
        """Per effect: used cells and degeneracy sums per level (grid + (1 + n_stats,))."""
        func = partial(slabbed, "counts", self.layout, self.effects)
        return self._run("fe-counts", func, (levels,), (_flat_list, self._grids()), 2 + self.layout.n_params)

    def evaluate(self, params: np.ndarray, levels: list, hessian: bool = True, final: bool = False) -> dict:
        """LL, covariate gradient/Hessian and the effects' gradients, diagonals and cross
        blocks at ``params`` and effect values ``levels``; keeps ``W`` for :meth:`product`."""
        func = partial(slabbed, "eval", self.layout, self.effects, np.asarray(params, float), hessian, final)
        keys = ("ll", "grad") + (("dev", "n_separated", "ll_const") if final else ())
        keys += ("dev",) if self.layout.family.n_extra and not final else ()
        keys += ("hess",) if hessian else ()
        P = self.layout.n_params if hessian else 0
        fe_keys = ("grad_fe",) + (("diag_fe", "cross_fe") if hessian else ())
        grids = (None,) * len(keys) + self._grids() * len(fe_keys)
        reduce = (partial(_flat_keys, keys, fe_keys), grids)
        flat = self._run("eval", func, (levels,), reduce, 1 + len(fe_keys) + P, persist=hessian)
        out = dict(zip(keys, flat, strict=False))
        m = len(self.effects)
        for j, k in enumerate(fe_keys):
            out[k] = flat[len(keys) + j * m : len(keys) + (j + 1) * m]
        return out

    def product(self, V: list) -> list:
        """``A V``: the effects' block of the information at the last evaluation with the
        Hessian, times level arrays ``V`` (grid + (k,)); one pass over the kept ``W``."""
        func = partial(fe_matvec_chunk, self.effects)
        if self._W_local is not None and effects_numba.ENGINE == "numba":
            k = V[0].shape[-1]
            Vt = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, k) for v in V]).T
            out, res, start = self.product_flat(Vt), [], 0
            for e in self.effects:
                res.append(out[:, start : start + e.size].T.reshape(e.shape + (k,)))
                start += e.size
            return res
        if self._W_local is not None:
            t0 = time.perf_counter()
            cuts = [_cut(self.effects, V, ix) for ix in self.plan.index]
            if len(cuts) == 1:
                parts = [func(self._W_local[0], *cuts[0])]
            else:
                parts = list(
                    local_pool().map(lambda wc: func(wc[0], *wc[1]), zip(self._W_local, cuts, strict=True))
                )
            self.counter.record("fe-product", time.perf_counter() - t0)
            return _gather(self.effects, self.plan, parts, (V[0].shape[-1],))
        if self._W is None:
            raise RuntimeError("product() needs an evaluation with the Hessian first")
        if not self._tree_pays(2 * V[0].shape[-1]):
            tasks = [
                dask.delayed(func, pure=False)(W, *_cut(self.effects, V, ix))
                for ix, W in zip(self.plan.index, self._W, strict=True)
            ]
            t0 = time.perf_counter()
            parts = run(None, "fe-product", *tasks, optimize=False)
            self.counter.record("fe-product", time.perf_counter() - t0)
            return _gather(self.effects, self.plan, list(parts), (V[0].shape[-1],))
        blocks = [(W,) for W in self._W]
        reduce = (_flat_list, self._grids())
        func = partial(_matvec, self.effects)
        return self._run_cluster("fe-product", func, (list(V),), reduce, blocks, False)

    def product_flat(self, Vt: np.ndarray) -> np.ndarray:
        """:meth:`product` on the effects' levels concatenated as one ``(k, levels)`` array
        (the layout of :func:`~daskglm.kernels.effects.block_pcg`); returns the same layout."""
        if self._W_local is not None and effects_numba.ENGINE == "numba":
            t0 = time.perf_counter()
            out = self._product_in_process(np.ascontiguousarray(Vt, dtype=np.float64))
            self.counter.record("fe-product", time.perf_counter() - t0)
            return out
        k, parts, start = Vt.shape[0], [], 0
        for e in self.effects:
            parts.append(Vt[:, start : start + e.size].T.reshape(e.shape + (k,)))
            start += e.size
        return np.concatenate([p.reshape(-1, k) for p in self.product(parts)]).T.copy()

    def _product_in_process(self, Vt: np.ndarray) -> np.ndarray:
        """``A V`` (``(k, levels)`` in and out) on this process's chunks of ``W`` by the
        compiled row loop, every chunk reading and writing the whole level arrays (no cut and
        gather per chunk), the chunks shared among the threads, one output per thread."""
        if self._groups is None:
            axes = tuple(e.axes for e in self.effects)
            grids = tuple(e.shape for e in self.effects)
            chunks = []
            for ix, W in zip(self.plan.index, self._W_local, strict=True):
                base, step, length = effects_numba.global_rows(axes, grids, ix)
                chunks.append((np.ascontiguousarray(W, dtype=np.float64), base, step, length))
            n = min(os.cpu_count() or 1, len(chunks))
            # the largest chunks first, each to the least loaded thread
            loads, groups = [0] * n, [[] for _ in range(n)]
            for c in sorted(chunks, key=lambda c: -c[0].size):
                j = int(np.argmin(loads))
                groups[j].append(c)
                loads[j] += c[0].size
            self._groups = groups
        if len(self._groups) == 1:
            return effects_numba.product_rows(self._groups[0], Vt)
        parts = list(local_pool().map(lambda g: effects_numba.product_rows(g, Vt), self._groups))
        out = parts[0]
        for p in parts[1:]:
            out += p
        return out

    def scores(self, params: np.ndarray, levels: list, proj: list, keeps: Sequence[tuple[int, ...]]) -> dict:
        """The partialled-out scores' meat and their sums per cluster for each ``keeps``."""
        func = partial(slabbed, "scores", self.layout, self.effects, np.asarray(params, float), tuple(keeps))
        sizes = tuple(sl.stop for sl in self.plan.index[-1])
        grids = (None,)
        for keep in keeps:
            grid = (tuple(keep), tuple(sizes[a] for a in keep))
            grids += (grid, grid)
        P = self.layout.n_params
        flat = self._run("fe-scores", func, (levels, proj), (_flat_scores, grids), 1 + P)
        clusters = [(flat[1 + 2 * j], flat[2 + 2 * j]) for j in range(len(keeps))]
        return {"meat": flat[0], "clusters": clusters}
