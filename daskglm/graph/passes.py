"""Dask graph building: map the numpy kernels over the chunks and tree-sum the results.

This is the only module of the engine that imports dask. Each pass over the panel is declared
the way dask's ``reduction`` and flox declare theirs:

* **chunk**: a kernel of :mod:`daskglm.kernels.chunk` turns one chunk of every input into a small
  packed vector (``blockwise`` lines the chunks of all inputs up along the panel axes);
* **combine**: the vectors are summed in a tree (``split_every``);
* **finalize**: the client unpacks the summed vector (``finalize_eval``).

One pass is one call to ``dask.compute``; :class:`PassCounter` counts them.
"""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache, partial

import dask
import dask.array as da
import dask.threaded
import numpy as np
from dask.base import get_scheduler
from dask.highlevelgraph import HighLevelGraph
from dask.system import CPU_COUNT

from ..kernels.chunk import cluster_chunk, eval_kernel, eval_packer, setup_chunk, setup_packer
from ..kernels.layout import Layout

__all__ = [
    "PASS_COMPUTE",
    "LocalPass",
    "in_process",
    "threaded_here",
    "current_scheduler",
    "local_pool",
    "tree_add",
    "PassCounter",
    "align_arrays",
    "full_chunks",
    "setup_graph",
    "eval_graph",
    "cluster_graph",
    "predict_graph",
    "lazy_zeros",
    "materialized",
    "run",
    "add_vectors",
    "root_parts",
]

#: target number of cells per chunk of the full grid when the data come without chunks
DEFAULT_CHUNK_CELLS = 2**19


@dataclass
class PassCounter:
    """Counts the passes over the data (calls to ``dask.compute``) and their time."""

    passes: int = 0
    seconds: float = 0.0
    log: list = field(default_factory=list)

    def record(self, what: str, seconds: float) -> None:
        self.passes += 1
        self.seconds += seconds
        self.log.append((what, seconds))


def full_chunks(shape: tuple[int, ...], chunks=None, cells: int = DEFAULT_CHUNK_CELLS) -> tuple:
    """Chunks of the full grid: the user's ``chunks`` (any form dask accepts) or, by default,
    about ``cells`` cells per chunk.

    The default cuts C-ordered slabs where it can: the leading axes are split and the trailing
    ones kept whole, so that every chunk of an in-memory (C-contiguous) array is one contiguous
    piece of it. The compiled kernel then reads the columns in place instead of copying each
    chunk (at 2e6 cells the copies were a third of a fit's peak memory). Where a single slice
    of the first axis is already larger than ``cells``, dask's ``"auto"`` chunks are used.
    """
    if chunks is not None:
        return da.core.normalize_chunks(chunks, shape, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return ()
    trailing = int(np.prod(shape[1:], dtype=np.int64))
    if trailing > cells:
        return da.core.normalize_chunks("auto", shape, limit=cells * 8, dtype=np.float64)
    rows = max(1, cells // max(trailing, 1))
    pieces = max(1, -(-shape[0] // rows))
    even = -(-shape[0] // pieces)  # spread the rows evenly over the pieces
    return da.core.normalize_chunks((even,) + shape[1:], shape, dtype=np.float64)


def lazy_zeros(shape: tuple[int, ...]) -> da.Array:
    """A lazy full-grid array of zeros (a shape template for predictions on new data)."""
    return da.zeros(shape, chunks=full_chunks(shape))


def align_arrays(values: list, axes: list[tuple[int, ...]], features: list[bool], chunks) -> list:
    """Turn every input into a dask array chunked like ``y`` along the panel axes.

    ``values`` are numpy or dask arrays (or 0-d), each spanning the panel axes ``axes[k]``
    (in panel order) plus a trailing feature axis where ``features[k]``; ``chunks`` are the
    chunks of the full grid. Feature axes are kept in one chunk.
    """
    out = []
    for v, ax, feat in zip(values, axes, features, strict=True):
        want = tuple(chunks[a] for a in ax) + ((v.shape[-1],) if feat else ())
        if isinstance(v, da.Array):
            out.append(v if v.chunks == want else v.rechunk(want))
        else:
            out.append(_from_numpy(np.asarray(v), want))
    return out


def _from_numpy(v: np.ndarray, chunks: tuple) -> da.Array:
    """A dask array whose chunks are views of ``v`` (``da.from_array`` copies a numpy array
    first: as much memory again as the data, 64 MB of a 2e6-cell panel of four variables)."""
    if v.ndim == 0:
        return da.from_array(v, chunks=())
    chunks = da.core.normalize_chunks(chunks, v.shape, dtype=v.dtype)
    name = f"array-{uuid.uuid4().hex}"
    slices = da.core.slices_from_chunks(chunks)
    keys = itertools.product([name], *(range(len(c)) for c in chunks))
    dsk = dict(zip(keys, (v[s] for s in slices), strict=True))
    return da.Array(dsk, name, chunks, meta=v[(slice(0, 0),) * v.ndim])


def _blockwise_args(layout: Layout, arrays: list) -> list:
    """``blockwise``'s (array, index) pairs: panel axes ``d0, d1, ...``; feature axes private."""
    args = []
    for k, (arr, spec) in enumerate(zip(arrays, layout.args, strict=True)):
        ind = tuple(f"d{a}" for a in spec.axes)
        if spec.n_features is not None:
            ind += (f"feature{k}",)
        args += [arr, ind]
    return args


def _map_chunks(func, layout: Layout, arrays: list, length: int, keep: tuple[int, ...] = ()) -> da.Array:
    """``blockwise`` of ``func`` over the aligned chunks; output axes = panel axes + stat.

    Each pass gets a fresh name rather than a token: tokenizing the layout and parameters
    costs more than the rest of building the graph, and no two passes share results.
    """
    index = [f"d{k}" for k in range(layout.ndim)]
    name = f"daskglm-{getattr(func, 'func', func).__name__}-{uuid.uuid4().hex}"
    return da.blockwise(
        func,
        tuple(index) + ("stat",),
        *_blockwise_args(layout, arrays),
        new_axes={"stat": length},
        adjust_chunks={index[d]: 1 for d in range(layout.ndim) if d not in keep},
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0,) * (layout.ndim + 1)),
        name=name,
    )


#: children per node of the tree that sums the chunks' vectors
SPLIT_EVERY = 8


def add_vectors(parts: list) -> np.ndarray:
    """Sum of the chunks' packed vectors (each ``(1, ..., 1, n)``), as an ``(n,)`` vector."""
    out = np.array(parts[0], dtype=np.float64).reshape(-1)
    for part in parts[1:]:
        out += np.reshape(part, -1)
    return out


def _tree_sum(blocks: da.Array, ndim: int, keep: tuple[int, ...] = ()) -> da.Array:
    """Sum the per-chunk vectors over every panel axis not in ``keep``.

    Without ``keep``, a tree of :data:`SPLIT_EVERY`-way additions straight over the kernel
    tasks' outputs, one array chunk at the root: no per-chunk ``sum`` tasks as
    ``Array.sum`` makes (with graph optimization skipped nothing fuses them), so a pass over
    ``c <= 8`` chunks is ``c + 1`` tasks instead of ``2c + 2`` (and ``c`` on a cluster, which
    adds the root's children on the client: :func:`root_parts`)."""
    axes = tuple(d for d in range(ndim) if d not in keep)
    if keep:
        return blocks.sum(axis=axes, split_every=SPLIT_EVERY) if axes else blocks
    name = f"daskglm-sum-{uuid.uuid4().hex}"
    level = list(dask.core.flatten(blocks.__dask_keys__()))
    layer: dict = {}
    depth = 0
    while True:
        depth += 1
        groups = [level[g : g + SPLIT_EVERY] for g in range(0, len(level), SPLIT_EVERY)]
        if len(groups) == 1:
            layer[(name, 0)] = (add_vectors, groups[0])
            break
        level = [(name, depth, g) for g in range(len(groups))]
        layer.update({key: (add_vectors, group) for key, group in zip(level, groups, strict=True)})
    hlg = HighLevelGraph.from_collections(name, layer, dependencies=[blocks])
    n = blocks.shape[-1]
    return da.Array(hlg, name, chunks=((n,),), dtype=np.float64, meta=np.empty((0,)))


def root_parts(g) -> list | None:
    """Keys of the children of a tree-summed pass's root (:func:`_tree_sum`): a distributed
    scheduler may gather them and add them with :func:`add_vectors` on the client instead of
    running the root task (one hop fewer per pass). ``None`` for any other graph (also once
    graph optimization has rewritten the root)."""
    if not (isinstance(g, da.Array) and g.name.startswith("daskglm-sum-")):
        return None
    dsk = g.__dask_graph__()
    task = dsk.get((g.name, 0))
    if isinstance(task, tuple) and len(task) == 2 and task[0] is add_vectors and isinstance(task[1], list):
        if all(k in dsk for k in task[1]):
            return list(task[1])
    return None


def _as_is(x, axis=None, keepdims=True):
    return x


def _packed(combine, x: np.ndarray, axis=None, keepdims: bool = True) -> np.ndarray:
    out = combine(x)
    return out.reshape((1,) * (x.ndim - 1) + (-1,)) if keepdims else out


def combined_reduction(blocks: da.Array, ndim: int, combine, name: str) -> da.Array:
    """Tree-reduce per-chunk packed vectors whose combine is not a sum (the TSQR's stacked R
    factors, double-double sums): ``combine(stacked) -> vector`` at every tree node and the root
    (``split_every=8``), as a 1-D dask array."""
    merge = partial(_packed, combine)
    return da.reduction(
        blocks,
        chunk=_as_is,
        combine=merge,
        aggregate=merge,
        axis=tuple(range(ndim)),
        keepdims=False,
        dtype=np.float64,
        split_every=8,
        concatenate=True,
        meta=np.empty((0,)),
        name=name,
    )


@dataclass
class LocalPass:
    """A tree-summed pass over chunks that are already data, run on this process's threads
    without a dask graph (:func:`_local_pass`); :func:`run` computes it with :meth:`compute`.

    On dask's threaded scheduler building, materialising and ordering a pass's graph cost
    ~10 ms a pass (blockwise tasks with one argument per input) while the kernels wait:
    about a third of an in-memory Newton iteration at 2e6 cells.
    """

    func: object
    chunks: list

    def compute(self) -> np.ndarray:
        """``func`` of every chunk's arguments on :func:`local_pool`, summed as
        :func:`_tree_sum` sums them (groups of :data:`SPLIT_EVERY`, in chunk order)."""
        func = self.func
        return tree_add(list(local_pool().map(lambda args: func(*args), self.chunks)))


def tree_add(vectors: list) -> np.ndarray:
    """The chunks' vectors (in chunk order) summed as :func:`_tree_sum` sums them: groups of
    :data:`SPLIT_EVERY`, level by level (the same additions in the same order, so the same
    bits, wherever the vectors were computed)."""
    level = list(vectors)
    while True:
        groups = [level[g : g + SPLIT_EVERY] for g in range(0, len(level), SPLIT_EVERY)]
        if len(groups) == 1:
            return add_vectors(groups[0])
        level = [add_vectors(group) for group in groups]


@lru_cache(maxsize=1)
def local_pool() -> ThreadPoolExecutor:
    """The threads of the passes run in this process without a dask graph (:class:`LocalPass`,
    the fixed effects' in-process passes): as many as dask's threaded scheduler uses."""
    return ThreadPoolExecutor(max_workers=dask.config.get("num_workers", None) or CPU_COUNT)


def current_scheduler():
    """dask's scheduler for a compute here (``dask.base.get_scheduler()``), without importing
    ``distributed`` where it was never imported: no client can exist then, and dask's own
    lookup would import it (with tornado, msgpack, click...: ~20 MB of a threaded fit's peak)."""
    if "distributed" not in sys.modules and not dask.config.get("scheduler", None):
        return None
    return get_scheduler()


def threaded_here() -> bool:
    """Whether a pass would run on dask's threaded scheduler in this process: no scheduler
    configured, or ``"threads"``, and no :data:`PASS_COMPUTE`."""
    return PASS_COMPUTE.get() is None and current_scheduler() in (None, dask.threaded.get)


def in_process(arrays: list) -> bool:
    """Whether a pass over ``arrays`` would run on dask's threaded scheduler in this process
    (:func:`threaded_here`) with every chunk of every input already data (numpy, or persisted
    here): it can then skip the dask graph."""
    if not threaded_here():
        return False
    return bool(arrays) and all(isinstance(a, da.Array) for a in arrays) and materialized(arrays)


def _local_pass(func, layout: Layout, arrays: list) -> LocalPass | None:
    """``func`` over the aligned chunks as a :class:`LocalPass`, when the pass would run on
    dask's threaded scheduler (no scheduler configured, or ``"threads"``; no
    :data:`PASS_COMPUTE`) and every chunk of every input is already data; else ``None``.
    Also where :data:`PASS_COMPUTE` declares ``runs_local_passes`` (a distributed cluster's
    runner, whose chunks are then the futures of a persisted panel)."""
    compute = PASS_COMPUTE.get()
    if compute is None:
        if not in_process(arrays):
            return None
    elif not getattr(compute, "runs_local_passes", False):
        return None
    elif not arrays or not all(isinstance(a, da.Array) for a in arrays) or not materialized(arrays):
        return None
    (iy,) = layout.role("y")
    if len(layout.args[iy].axes) != layout.ndim:
        return None
    graphs = [a.__dask_graph__() for a in arrays]
    chunks = []
    for idx in itertools.product(*(range(n) for n in arrays[iy].numblocks)):
        args = []
        for a, dsk, spec in zip(arrays, graphs, layout.args, strict=True):
            key = (a.name,) + tuple(idx[d] for d in spec.axes) + ((0,) if spec.n_features is not None else ())
            args.append(dsk[key])
        chunks.append(tuple(args))
    return LocalPass(func, chunks)


def setup_graph(layout: Layout, arrays: list, engine: str | None = None) -> da.Array | LocalPass:
    """The setup pass: validation counts, sums, constants and the Gram matrix (``engine`` as
    in :func:`eval_graph`: the Gram goes through the compiled sweep under numba); a
    :class:`LocalPass` where :func:`_local_pass` applies."""
    n = setup_packer(layout).length
    func = partial(setup_chunk, layout, engine=engine)
    local = _local_pass(func, layout, arrays)
    return local if local is not None else _tree_sum(_map_chunks(func, layout, arrays, n), layout.ndim)


def eval_graph(
    layout: Layout,
    arrays: list,
    params: np.ndarray,
    *,
    hessian=True,
    final=False,
    engine: str | None = None,
    meat: bool = True,
) -> da.Array | LocalPass:
    """LL, gradient and (optionally) Hessian at ``params`` as one tree-summed vector.

    ``meat=False`` leaves the final pass's HC0 meat out (it costs about half an evaluation).

    ``engine``: ``"numba"`` (the compiled sweep, :mod:`daskglm.kernels.chunk_numba`) or ``"numpy"``
    (the reference kernel); ``None`` for the default (:func:`daskglm.kernels.engines.resolve_engine`).
    A :class:`LocalPass` instead of a dask array where :func:`_local_pass` applies (in-memory
    inputs on the threaded scheduler).
    """
    n = eval_packer(layout, hessian=hessian, final=final, meat=meat).length
    func = partial(
        eval_kernel(engine), layout, np.asarray(params, dtype=np.float64), hessian, final, meat=meat
    )
    local = _local_pass(func, layout, arrays)
    return local if local is not None else _tree_sum(_map_chunks(func, layout, arrays, n), layout.ndim)


def cluster_graph(layout: Layout, arrays: list, params: np.ndarray, keep: tuple[int, ...]):
    """Cluster-robust meat ``sum_c s_c s_c'`` and the number of non-empty clusters.

    The per-cluster scores are a reduction that keeps the cluster axes ``keep``; they stay on
    the cluster, only the P x P meat comes back.
    """
    P = layout.n_params
    func = partial(cluster_chunk, layout, np.asarray(params, dtype=np.float64), tuple(keep))
    scores = _tree_sum(_map_chunks(func, layout, arrays, P + 1, keep), layout.ndim, keep)
    # after the sum the remaining axes are the cluster axes, then the stat axis
    s = scores[..., :P]
    nk = len(keep)
    meat = da.tensordot(s, s, axes=(list(range(nk)), list(range(nk))))
    n_clusters = (scores[..., P] > 0).sum()
    return meat, n_clusters


def predict_graph(func, layout: Layout, arrays: list) -> da.Array:
    """Map a per-chunk prediction kernel over the full grid (output: the panel's shape)."""
    index = tuple(f"d{k}" for k in range(layout.ndim))
    return da.blockwise(
        func,
        index,
        *_blockwise_args(layout, arrays),
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0,) * layout.ndim),
    )


def persist_arrays(arrays: list) -> list:
    """Keep the (aligned, chunked) input arrays in the memory of the active scheduler's workers."""
    return list(dask.persist(*arrays))


#: inputs off the full grid are held in memory when together they take at most this share of
#: the full-grid inputs' bytes and at most ``SMALL_ARRAYS_MAX_BYTES``
SMALL_ARRAYS_SHARE = 0.125
SMALL_ARRAYS_MAX_BYTES = 512e6


def hold_small_arrays(layout: Layout, arrays: list) -> tuple[list, int]:
    """Persist the inputs that do not span every panel dim (covariates on ``(i, j)``, ``k``...).

    A fit that streams its full-grid arrays from a store would otherwise read these again in
    every pass, once per chunk that needs them: with 24 small covariates beside 5 full-grid
    arrays that cost more than the full-grid reads. Held only when they are small beside the
    full-grid arrays (see ``SMALL_ARRAYS_SHARE``). Returns the arrays and the bytes held.
    """
    full = sum(int(a.nbytes) for a, s in zip(arrays, layout.args, strict=True) if len(s.axes) == layout.ndim)
    small = [k for k, s in enumerate(layout.args) if len(s.axes) < layout.ndim]
    small = [k for k in small if not materialized([arrays[k]])]
    nbytes = sum(int(arrays[k].nbytes) for k in small)
    if not small or nbytes > min(SMALL_ARRAYS_SHARE * full, SMALL_ARRAYS_MAX_BYTES):
        return arrays, 0
    held = dask.persist(*[arrays[k] for k in small])
    out = list(arrays)
    for k, a in zip(small, held, strict=True):
        out[k] = a
    return out, nbytes


def materialized(arrays: list) -> bool:
    """Whether every chunk of every array is already data (persisted, or numpy chunks), so
    that a pass has no input tasks to fuse and graph optimization can be skipped."""
    for arr in arrays:
        dsk = arr.__dask_graph__()
        if any(dask.core.istask(dsk[key]) for key in dask.core.flatten(arr.__dask_keys__())):
            return False
    return True


#: How :func:`run` computes a pass: ``None`` is ``dask.compute`` on the active scheduler (the
#: threaded path, no overhead); :func:`daskglm.runtime.scheduling.compute_target` sets a function
#: ``compute(graphs, optimize) -> tuple`` for a distributed cluster (a bounded wait).
PASS_COMPUTE: ContextVar = ContextVar("daskglm_pass_compute", default=None)


def run(counter: PassCounter | None, what: str, *graphs, optimize: bool = True):
    """Compute ``graphs`` together, as one pass over the data, on the active scheduler.

    ``optimize=False`` skips dask's graph optimization (fusing input tasks into the kernel
    tasks), which costs tens of milliseconds a pass and buys nothing when the inputs are
    :func:`materialized`. Where :data:`PASS_COMPUTE` is set, it computes the pass instead.
    A :class:`LocalPass` among ``graphs`` is computed by itself, on this process's threads.
    """
    t0 = time.perf_counter()
    compute = PASS_COMPUTE.get()
    rest = [g for g in graphs if not isinstance(g, LocalPass)]
    if compute is not None and getattr(compute, "runs_local_passes", False):
        rest, out = graphs, compute(graphs, optimize)  # a cluster's runner takes the local passes too
    elif not rest:
        out = ()
    elif compute is None:
        out = dask.compute(*rest, optimize_graph=optimize, scheduler=current_scheduler() or dask.threaded.get)
    else:
        out = compute(rest, optimize)
    if len(rest) < len(graphs):  # the local passes, in their places
        done = iter(out)
        out = tuple(g.compute() if isinstance(g, LocalPass) else next(done) for g in graphs)
    if counter is not None:
        counter.record(what, time.perf_counter() - t0)
    return out
