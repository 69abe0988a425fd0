"""Dask graphs of the passes of a fixed-effects model (graph layer; see :mod:`daskglm.kernels.effects`).

A fixed effect's arrays live on its own grid, which the chunks of the panel cut into pieces:
each chunk task receives the piece of every level array that its coordinate ranges cover and
returns pieces, which the client adds into the effect grids. So a pass is one task per chunk
(no tree reduction: the outputs are level-sized, not scalars), and one ``dask.compute``.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import dask
import dask.array as da
import numpy as np
from dask.base import get_scheduler

from ..kernels import effects_numba
from ..kernels.effects import Effect, fe_matvec_chunk, slabbed
from ..kernels.layout import Layout
from .passes import PASS_COMPUTE, PassCounter, materialized, run

__all__ = ["ChunkPlan", "FixedEffectPasses"]


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
        self._executor: ThreadPoolExecutor | None = None
        #: per thread, its chunks' (W, row table) for the compiled in-process product
        self._groups: list | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        return self._executor

    def _local_blocks(self) -> list | None:
        """Every chunk's inputs as data, when a pass would run on dask's threaded scheduler
        and every input chunk already is data (numpy, or persisted in this process): the
        passes then run on this process's threads without a dask graph (building and ordering
        one cost about 10 ms a pass); else None."""
        if PASS_COMPUTE.get() is not None or get_scheduler() not in (None, dask.threaded.get):
            return None
        if self._blocks is None:
            ok = bool(self.arrays) and all(isinstance(a, da.Array) for a in self.arrays)
            self._blocks = list(dask.compute(*self.plan.blocks)) if ok and materialized(self.arrays) else []
        return self._blocks or None

    def _run(self, what: str, func, per_chunk: list, persist: bool = False):
        """One pass: ``func(*per_chunk[c], *inputs of chunk c)`` for every chunk."""
        t0 = time.perf_counter()
        local = self._local_blocks()
        if persist and PASS_COMPUTE.get() is None:
            # dask's threaded scheduler: results, W included, are in this process anyway, and
            # the inner products run here on the chunks' W without a dask pass each (the
            # previous W is let go first: one W in memory at a time)
            self._W, self._W_local, self._groups = None, None, None
        if local is not None:
            out = list(self._pool().map(lambda c: func(*c[0], *c[1]), zip(per_chunk, local, strict=True)))
        else:
            tasks = [
                dask.delayed(func, pure=False)(*extra, *blk)
                for extra, blk in zip(per_chunk, self.plan.blocks, strict=True)
            ]
            if persist and PASS_COMPUTE.get() is not None:
                # keep only W on the workers, as keys of its own (the chunk results that hold
                # it are released once W and the small statistics are split off), and let the
                # previous evaluation's W go before this one is made: one W in cluster memory
                self._W_local, self._W = None, None
                n = len(tasks)
                held = dask.persist(
                    *[dask.delayed(operator.getitem, pure=False)(t, "W") for t in tasks],
                    *[dask.delayed(_small, pure=False)(t) for t in tasks],
                )
                self._W = list(held[:n])
                tasks = held[n:]
            out = list(run(None, what, *tasks, optimize=False))
        if persist and PASS_COMPUTE.get() is None:
            self._W_local = [o.pop("W", None) for o in out]
            if any(w is None for w in self._W_local):
                self._W_local = None
        self.counter.record(what, time.perf_counter() - t0)
        return out

    def counts(self, levels: list) -> list:
        """Per effect: used cells and degeneracy sums per level (grid + (1 + n_stats,))."""
        func = partial(slabbed, "counts", self.layout, self.effects)
        parts = self._run("fe-counts", func, [(_cut(self.effects, levels, ix),) for ix in self.plan.index])
        n = parts[0][0].shape[-1]
        return _gather(self.effects, self.plan, parts, (n,))

    def evaluate(self, params: np.ndarray, levels: list, hessian: bool = True, final: bool = False) -> dict:
        """LL, covariate gradient/Hessian and the effects' gradients, diagonals and cross
        blocks at ``params`` and effect values ``levels``; keeps ``W`` for :meth:`product`."""
        func = partial(slabbed, "eval", self.layout, self.effects, np.asarray(params, float), hessian, final)
        cuts = [(_cut(self.effects, levels, ix),) for ix in self.plan.index]
        parts = self._run("eval", func, cuts, persist=hessian)
        keys = ("ll", "grad") + (("dev", "n_separated", "ll_const") if final else ())
        keys += ("dev",) if self.layout.family.n_extra and not final else ()
        out = {k: sum(p[k] for p in parts) for k in keys}
        out["grad_fe"] = _gather(self.effects, self.plan, [p["grad_fe"] for p in parts])
        if hessian:
            out["hess"] = sum(p["hess"] for p in parts)
            out["diag_fe"] = _gather(self.effects, self.plan, [p["diag_fe"] for p in parts])
            P = self.layout.n_params
            out["cross_fe"] = _gather(self.effects, self.plan, [p["cross_fe"] for p in parts], (P,))
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
                    self._pool().map(lambda wc: func(wc[0], *wc[1]), zip(self._W_local, cuts, strict=True))
                )
            self.counter.record("fe-product", time.perf_counter() - t0)
            return _gather(self.effects, self.plan, parts, (V[0].shape[-1],))
        if self._W is None:
            raise RuntimeError("product() needs an evaluation with the Hessian first")
        tasks = [
            dask.delayed(func, pure=False)(W, *_cut(self.effects, V, ix))
            for ix, W in zip(self.plan.index, self._W, strict=True)
        ]
        t0 = time.perf_counter()
        parts = run(None, "fe-product", *tasks, optimize=False)
        self.counter.record("fe-product", time.perf_counter() - t0)
        return _gather(self.effects, self.plan, list(parts), (V[0].shape[-1],))

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
        parts = list(self._pool().map(lambda g: effects_numba.product_rows(g, Vt), self._groups))
        out = parts[0]
        for p in parts[1:]:
            out += p
        return out

    def scores(self, params: np.ndarray, levels: list, proj: list, keeps: Sequence[tuple[int, ...]]) -> dict:
        """The partialled-out scores' meat and their sums per cluster for each ``keeps``."""
        func = partial(slabbed, "scores", self.layout, self.effects, np.asarray(params, float), tuple(keeps))
        cuts = [(_cut(self.effects, levels, ix), _cut(self.effects, proj, ix)) for ix in self.plan.index]
        parts = self._run("fe-scores", func, cuts)
        out = {"meat": sum(p["meat"] for p in parts), "clusters": []}
        sizes = [sl.stop for sl in self.plan.index[-1]]
        P = self.layout.n_params
        for j, keep in enumerate(keeps):
            shape = tuple(sizes[a] for a in keep)
            S, n = np.zeros(shape + (P,)), np.zeros(shape)
            for ix, p in zip(self.plan.index, parts, strict=True):
                sl = tuple(ix[a] for a in keep)
                S[sl] += p["clusters"][j][0]
                n[sl] += p["clusters"][j][1]
            out["clusters"].append((S, n))
        return out
