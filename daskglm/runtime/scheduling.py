"""Where a fit's passes run (``client=``) and whether the panel is kept in cluster memory.

``client=None``
    The active ``distributed.Client`` if there is one; else the scheduler named by dask's
    configuration (``DASK_SCHEDULER_ADDRESS`` / ``scheduler-address``); else dask's local
    threaded scheduler.
``client="local"``
    A ``distributed.LocalCluster`` sized to the machine (one worker process per two cores, the
    machine's memory shared between them), closed when the fit returns.
``client="tcp://host:8786"`` / ``"tls://..."``
    Connect to a running scheduler; TLS settings come from dask's configuration
    (``distributed.comm.tls.*``) or from ``security=``.
``client=Client(...)``
    Used as is (and left open).

On a distributed cluster every pass is computed as futures watched by a :class:`PassWatchdog`:
when the cluster has had no workers for longer than ``daskglm.no-workers-timeout`` (dask
configuration, default ``"60s"``; environment ``DASK_DASKGLM__NO_WORKERS_TIMEOUT``), or the
scheduler is lost, the pass is cancelled and the fit raises :class:`ClusterLostError`, which
says how to resume from the checkpoint. A worker lost while others live is not an error: dask
recomputes its tasks on the others. On dask's threaded scheduler passes run as plain
``dask.compute`` calls, with no watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph
from dask.utils import parse_bytes, parse_timedelta

from ..graph import passes as graph

if TYPE_CHECKING:
    from ..frontend.panel import Panel

__all__ = [
    "CLUSTER_CHUNK_CELLS",
    "ClusterLostError",
    "ComputeTarget",
    "DirectPasses",
    "direct_passes",
    "balance_chunks",
    "cluster_chunks",
    "in_cluster_memory",
    "PassWatchdog",
    "compute_target",
    "no_workers_timeout",
    "persist_decision",
    "persist_panel",
    "prepare_workers",
    "worker_malloc_trim",
]

log = logging.getLogger("daskglm")

#: dask configuration key: how long a pass may wait while the cluster has no workers
NO_WORKERS_TIMEOUT_KEY = "daskglm.no-workers-timeout"
#: seconds :class:`DirectPasses` waits for a worker to answer a first direct request
PROBE_TIMEOUT = 3.0
#: dask configuration key: glibc trim threshold set on the workers (:mod:`daskglm.runtime.workers`)
WORKER_MALLOC_KEY = "daskglm.worker-malloc-trim"
#: dask configuration key: passes over a persisted panel run directly on its workers (:class:`DirectPasses`)
DIRECT_PASSES_KEY = "daskglm.direct-passes"
dask.config.update_defaults(
    {"daskglm": {"no-workers-timeout": "60s", "worker-malloc-trim": "64MiB", "direct-passes": True}}
)


class ClusterLostError(ConnectionError):
    """The cluster running a fit lost all its workers (for longer than the grace period) or its
    scheduler; the message says how to resume from the checkpoint."""


def no_workers_timeout() -> float:
    """Seconds a pass waits while the cluster has no workers (``daskglm.no-workers-timeout``)."""
    value = dask.config.get(NO_WORKERS_TIMEOUT_KEY)
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (TypeError, ValueError, KeyError):
        seconds = None
    if seconds is None or not seconds > 0:
        raise ValueError(
            f"dask config {NO_WORKERS_TIMEOUT_KEY}={value!r} is not a positive duration; give e.g. "
            "'60s', '10m', '1h' or a number of seconds"
        )
    return float(seconds)


def worker_malloc_trim() -> int | None:
    """Bytes of freed heap a worker may keep (``daskglm.worker-malloc-trim``), ``None`` when the
    setting is ``False`` (leave the workers' allocator alone)."""
    value = dask.config.get(WORKER_MALLOC_KEY, "64MiB")
    if value is None or value is False or str(value).strip().lower() in ("false", "none", "off", "0"):
        return None
    try:
        trim = parse_bytes(value)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"dask config {WORKER_MALLOC_KEY}={value!r} is not a size; give e.g. '64MiB' or False"
        ) from err
    if trim <= 0:
        raise ValueError(f"dask config {WORKER_MALLOC_KEY}={value!r} must be a positive size or False")
    return int(trim)


def prepare_workers(client) -> bool:
    """Register :class:`daskglm.runtime.workers.PassRunner` on the cluster and
    :class:`daskglm.runtime.workers.WorkerMalloc` unless ``daskglm.worker-malloc-trim`` is
    ``False`` (once; idempotent). Returns whether the pass runner is in place (direct passes,
    :class:`DirectPasses`)."""
    from .workers import PassRunner, WorkerMalloc

    trim = worker_malloc_trim()
    try:
        if trim is not None:
            client.register_plugin(WorkerMalloc(trim))
        client.register_plugin(PassRunner())
    except (OSError, TimeoutError) as err:  # the fit itself will report a lost cluster
        log.warning("daskglm: could not set up the workers: %s", err)
        return False
    return True


def _resume_hint(checkpoint) -> str:
    """How to carry on after the cluster is lost, given the fit's ``checkpoint=``."""
    if checkpoint is None:
        return (
            "no checkpoint= was given, so the fit must start again: pass checkpoint='state.json' "
            "(daskglm fit --checkpoint state.json) so that a fit which loses its cluster can resume "
            "from its last finished iteration"
        )
    path = os.fspath(checkpoint)
    try:
        with open(path) as f:
            iteration = int(json.load(f)["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"call the same fit again with checkpoint={path!r} (no iteration had been saved there "
            "yet, so it starts afresh)"
        )
    return (
        f"call the same fit again with checkpoint={path!r}: it resumes from iteration {iteration}, "
        "the last one saved there"
    )


@dataclass
class PassWatchdog:
    """Computes a pass on a distributed client without waiting forever.

    The graphs are submitted as futures and awaited in slices of ``poll`` seconds; between
    slices the scheduler is asked how many workers it has. After ``timeout`` seconds without
    any running worker, or with one worker paused (at its memory limit) the whole time, or when
    the connection to the scheduler is lost, the futures are cancelled and
    :class:`ClusterLostError` is raised. Installed by :func:`compute_target` as
    :data:`daskglm.graph.passes.PASS_COMPUTE` for the duration of a fit.
    """

    client: object
    timeout: float
    checkpoint: str | os.PathLike | None = None
    #: runs passes over persisted chunks on the workers without tasks (``None``: never)
    direct: DirectPasses | None = None
    #: the last pass's futures, released when the next pass has been submitted
    _held: list = field(default_factory=list, repr=False)
    #: :func:`daskglm.graph.passes.run` hands this runner its :class:`~daskglm.graph.passes.LocalPass`
    #: passes too (in-memory chunks: here the futures of a persisted panel)
    runs_local_passes = True

    @property
    def poll(self) -> float:
        return min(1.0, self.timeout / 5)

    def __call__(self, graphs: tuple, optimize: bool) -> tuple:
        """The results of ``graphs`` (dask arrays, :class:`~daskglm.graph.passes.LocalPass`): a
        local pass over futures runs directly on the workers holding them where it can
        (:class:`DirectPasses`), everything else as tasks."""
        done: dict = {}
        if self.direct is not None and self.client.status == "running":
            for i, g in enumerate(graphs):
                if isinstance(g, graph.LocalPass):
                    value = self.direct.run(g, self.poll)
                    if value is not None:
                        done[i] = value
        todo = [i for i in range(len(graphs)) if i not in done]
        if todo:
            done.update(zip(todo, self._tasks([graphs[i] for i in todo], optimize), strict=True))
        return tuple(done[i] for i in range(len(graphs)))

    def _tasks(self, graphs: list, optimize: bool) -> tuple:
        """``graphs`` computed as tasks, watched (:meth:`_wait`)."""
        from distributed.client import FutureCancelledError, FuturesCancelledError

        futures, assemble = self._submit(graphs, optimize)
        # the previous pass's futures are let go only now: released right after their gather,
        # they put a message on the client's batched stream to the scheduler (one batch per
        # 10 ms), which held this pass's graph back by up to 10 ms
        previous, self._held = self._held, futures
        del previous
        try:
            return assemble(self._wait(futures))
        except (FutureCancelledError, FuturesCancelledError) as err:
            if self.client.status == "running":
                raise
            raise ClusterLostError(self._message("lost its connection to the scheduler")) from err
        finally:
            if self.client.status == "running" and any(f.status == "pending" for f in futures):
                with contextlib.suppress(Exception):
                    self.client.cancel(futures)

    def _submit(self, graphs: list, optimize: bool) -> tuple[list, Callable[[list], tuple]]:
        """Futures of the pass and the function that turns their values into the results: the
        dask graphs by :meth:`_submit_graphs`, a :class:`~daskglm.graph.passes.LocalPass` as one
        task per chunk (``client.map``), its vectors added here by
        :func:`~daskglm.graph.passes.tree_add`."""
        local = [g for g in graphs if isinstance(g, graph.LocalPass)]
        if not local:
            return self._submit_graphs(graphs, optimize)
        others = [g for g in graphs if not isinstance(g, graph.LocalPass)]
        futures, assemble_others = self._submit_graphs(others, optimize) if others else ([], tuple)
        spans = [len(futures)]
        for g in local:
            columns = list(zip(*g.chunks, strict=True))
            futures = futures + self.client.map(g.func, *columns, pure=False)
            spans.append(len(futures))

        def assemble(values: list) -> tuple:
            rest = iter(assemble_others(values[: spans[0]]))
            sums = iter(graph.tree_add(values[a:b]) for a, b in zip(spans[:-1], spans[1:], strict=True))
            return tuple(next(sums) if isinstance(g, graph.LocalPass) else next(rest) for g in graphs)

        return futures, assemble

    def _submit_graphs(self, graphs: list, optimize: bool) -> tuple[list, Callable[[list], tuple]]:
        """Futures of dask graphs and the function that turns their values into the results.

        Arrays of one chunk (every tree-summed pass) are submitted by key, so the scheduler
        runs no ``finalize`` task per result; the root of a tree sum is not submitted at all:
        its children are gathered and added here (:func:`daskglm.graph.passes.root_parts`), which
        saves a hop from the workers to the root task's worker on every pass."""
        roots = [graph.root_parts(g) for g in graphs]  # before optimization renames the root
        if optimize:
            graphs = dask.optimize(*graphs)
        keys = [list(flatten(g.__dask_keys__())) if isinstance(g, da.Array) else () for g in graphs]
        if not all(len(k) == 1 for k in keys):
            return self.client.compute(list(graphs), optimize_graph=False), tuple
        dsk = HighLevelGraph.merge(*(g.__dask_graph__() for g in graphs))
        wanted, spans = [], []
        for parts, (key,) in zip(roots, keys, strict=True):
            if parts is not None and not all(k in dsk for k in parts):
                parts = None  # fused away by the optimization: compute the root
            spans.append((len(wanted), parts is not None))
            wanted += parts if parts is not None else [key]
        spans.append((len(wanted), False))

        def assemble(values: list) -> tuple:
            return tuple(
                graph.add_vectors(values[a:b]) if summed else values[a]
                for (a, summed), (b, _) in zip(spans[:-1], spans[1:], strict=True)
            )

        return self.client.get(dsk, wanted, sync=False), assemble

    def _workers(self) -> tuple[int, int, list[str]]:
        """Workers the scheduler knows of, how many of them run tasks (not paused at their
        memory limit, not closing), and the addresses of the paused ones; ``(0, 0, [])`` when
        it cannot be reached."""
        if self.client.status != "running":
            return 0, 0, []
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except (OSError, TimeoutError):
            return 0, 0, []
        status = {a: w.get("status", "running") for a, w in workers.items()}
        running = sum(1 for v in status.values() if v == "running")
        return len(workers), running, sorted(a for a, v in status.items() if v == "paused")

    async def _fetch(self, futures: list, timeout: float) -> list | None:
        """The futures' values once all are done, waited for and gathered in one trip through
        the client's event loop (one thread hop fewer a pass than ``wait`` then ``gather``);
        ``None`` when they are not all done within ``timeout`` seconds."""
        from distributed.client import _wait

        try:
            await _wait(futures, timeout=timeout)
        except TimeoutError:
            return None
        return await self.client._gather(futures)

    def _wait(self, futures: list) -> list:
        """The futures' values; raises :class:`ClusterLostError` when the cluster has had no
        running worker for :attr:`timeout` seconds meanwhile."""
        since = None  # when the cluster was first seen without workers
        paused_since: dict[str, float] = {}  # paused workers, since when (continuously)
        while True:
            values = self.client.sync(self._fetch, futures, self.poll)
            if values is not None:
                return values
            total, running, paused = self._workers()
            now = time.monotonic()
            paused_since = {w: paused_since.get(w, now) for w in paused}
            stuck = sorted(w for w, t in paused_since.items() if now - t >= self.timeout)
            if stuck:
                # dask runs no task on a paused worker, so the tasks it holds wait while it stays
                # paused (e.g. by its own unmanaged memory, which spilling cannot free)
                raise ClusterLostError(
                    self._message(
                        f"has had {len(stuck)} of its {total} workers ({', '.join(stuck)}) paused at "
                        f"their memory limit for {self.timeout:g} s or more while a pass was waiting "
                        "for their tasks. A worker's own memory (Python, dask, the compiled kernels: "
                        "about 0.5 GB) counts against its limit: give each worker more memory "
                        "(memory_limit=), or use smaller chunks"
                    )
                )
            if running:
                since = None
                continue
            if since is None:
                since = now
                log.warning(
                    "daskglm: the cluster has no running workers (%d paused or closing); waiting up "
                    "to %g s (%s)",
                    total,
                    self.timeout,
                    NO_WORKERS_TIMEOUT_KEY,
                )
            if now - since >= self.timeout:
                what = (
                    f"has had no workers for {now - since:.0f} s while a pass was waiting"
                    if not total
                    else f"has had no running worker for {now - since:.0f} s while a pass was "
                    f"waiting: all {total} are paused (at their memory limit) or closing. Give the "
                    "workers more memory (or more workers), or smaller chunks"
                )
                raise ClusterLostError(self._message(what))

    def _message(self, what: str) -> str:
        address = getattr(getattr(self.client, "scheduler", None), "address", None) or "?"
        return (
            f"the dask cluster at {address} {what} ({NO_WORKERS_TIMEOUT_KEY} is "
            f"{self.timeout:g} s), so the fit stops instead of waiting forever. Start workers again "
            f"(e.g. `dask worker {address}`), then {_resume_hint(self.checkpoint)}. Allow longer "
            f"with dask.config.set({{{NO_WORKERS_TIMEOUT_KEY!r}: '10m'}}) or "
            "DASK_DASKGLM__NO_WORKERS_TIMEOUT=10m"
        )


class DirectPasses:
    """Runs a :class:`~daskglm.graph.passes.LocalPass` over a persisted panel's futures on the
    workers that hold the chunks, by a direct request to each (the handler of
    :class:`daskglm.runtime.workers.PassRunner`), without a task graph.

    A task-graph pass on a cluster costs 15-30 ms beyond its kernels (the graph is built and
    sent to the scheduler, which sends the tasks on and the results back): about a third of an
    in-memory Newton iteration at 2e6 cells. Here the client sends each worker the pickled
    kernel (with the parameters) and the keys of its chunks; the vectors come back in the
    answer and are added in chunk order (:func:`daskglm.graph.passes.tree_add`, the same bits
    as the task graph and the threaded scheduler). The chunks are spread over the workers by
    :func:`balance_chunks`; inputs held elsewhere are fetched by the worker once per fit. The
    scheduler is asked where the chunks are on every pass, at the same time: if they moved (a
    worker was lost, data rebalanced), a worker is not running (paused at its memory limit)
    or the scheduler does not answer, the pass runs as tasks instead
    (:meth:`PassWatchdog._tasks`, with its watchdog); after a worker failed a request (lost,
    unreachable from the client) the rest of the fit's passes do.

    ``daskglm.direct-passes`` (dask configuration, default ``True``) switches it off.
    """

    def __init__(self, client):
        self.client = client
        #: per set of chunk keys: (the chunks' keys, who_has as pairs, worker -> chunk indices)
        self._plans: dict = {}
        self._workers: set = set()
        #: passes run directly and passes that fell back to tasks (diagnostics)
        self.runs = 0
        self.fallbacks = 0
        #: a worker failed a request (lost, unreachable): the fit's later passes run as tasks
        self.broken = False
        #: workers this client has reached directly in this fit
        self._reached: set = set()

    @staticmethod
    def _keys(local) -> list | None:
        """The chunks' keys, ``None`` unless every argument is a finished future."""
        out = []
        for chunk in local.chunks:
            if not all(type(a).__name__ == "Future" and a.status == "finished" for a in chunk):
                return None
            out.append(tuple(a.key for a in chunk))
        return out

    async def _who_has(self, keys: list) -> dict:
        """The workers holding each key (sorted), as the scheduler says now."""
        answer = await self.client.scheduler.who_has(keys=keys)
        return {k: sorted(answer.get(k) or ()) for k in keys}

    async def _plan(self, chunks: list) -> tuple | None:
        """Where each chunk runs (:func:`balance_chunks`); ``None`` when a key has no holder."""
        from .workers import FETCHED_MAX_BYTES

        keys = sorted({k for c in chunks for k in c}, key=str)
        who_has = await self._who_has(keys)
        if not all(who_has.values()):
            return None
        nbytes = await self.client.scheduler.nbytes(keys=keys, summary=False) or {}
        workers = (await self.client.scheduler.identity()).get("workers", {})
        threads = {w: int(info.get("nthreads") or 1) for w, info in workers.items()}
        # copies made for balance: at most half the fetch budget, a 16th of the smallest memory limit
        limits = [int(info.get("memory_limit") or 0) for info in workers.values()]
        budget = min([FETCHED_MAX_BYTES // 2] + [m // 16 for m in limits if m > 0])
        sizes = {k: int(nbytes.get(k) or 1) for k in keys}
        assign = balance_chunks(chunks, who_has, sizes, threads, budget)
        if not await self._reachable(list(assign)):
            self.broken = True
            return None
        return keys, who_has, assign

    async def _reachable(self, workers: list) -> bool:
        """Whether this client can talk to every worker in ``workers`` directly, asked once per
        worker and fit with a short timeout (:data:`PROBE_TIMEOUT`). Where the client reaches
        only the scheduler (a gateway, a proxy, a firewall) a direct request would wait out
        distributed's connect timeout (30 s) before the pass fell back to tasks."""
        new = [w for w in workers if w not in self._reached]
        if not new:
            return True
        probes = [self.client.rpc(w).identity() for w in new]
        try:
            await asyncio.wait_for(asyncio.gather(*probes), timeout=PROBE_TIMEOUT)
        except (OSError, asyncio.TimeoutError, TimeoutError) as err:
            log.info("daskglm: the workers cannot be reached directly (%r); passes run as tasks", err)
            return False
        self._reached.update(new)
        return True

    async def _run(self, local, chunks: list, poll: float) -> list | None:
        from distributed.protocol import pickle

        signature = tuple(chunks)
        plan = self._plans.get(signature)
        if plan is None:
            plan = await self._plan(chunks)
            if plan is None:
                return None
            self._plans[signature] = plan
        keys, who_has, assign = plan
        pairs = [[k, v] for k, v in who_has.items()]
        function = pickle.dumps(local.func)
        self._workers.update(assign)
        check = asyncio.ensure_future(self._who_has(keys))
        calls = {
            w: asyncio.ensure_future(
                self.client.rpc(w).daskglm_pass(
                    function=function, chunks=[chunks[i] for i in idx], who_has=pairs
                )
            )
            for w, idx in assign.items()
        }
        pending = set(calls.values()) | {check}
        try:
            while True:
                _, pending = await asyncio.wait(pending, timeout=poll)
                if check.done() and (check.exception() is not None or check.result() != who_has):
                    self._plans.pop(signature, None)  # the chunks moved, or the scheduler is gone
                    return None
                if not pending:
                    break
                if not pending & set(calls.values()):  # the workers answered, the scheduler did not
                    return None
                if check.done():  # a worker still computing: is it still there with its chunks?
                    check = asyncio.ensure_future(self._who_has(keys))
                    pending.add(check)
        finally:
            for f in pending:
                f.cancel()
        values: list = [None] * len(chunks)
        for w, call in calls.items():
            if call.exception() is not None:  # lost or unreachable: tasks for the rest of the fit
                log.debug("daskglm: direct passes off for this fit: %s: %r", w, call.exception())
                self.broken = True
                return None
            answer = call.result()
            if answer.get("status") != "OK":
                return None
            for i, v in zip(assign[w], answer["values"], strict=True):
                values[i] = v
        return values

    def run(self, local, poll: float) -> np.ndarray | None:
        """The pass's summed vector, or ``None`` when it must run as tasks (its chunks are not
        all finished futures, one moved, a worker is paused, lost or unreachable)."""
        chunks = None if self.broken else self._keys(local)
        values = None
        if chunks is not None:
            try:
                values = self.client.sync(self._run, local, chunks, poll)
            except (OSError, TimeoutError, ValueError, KeyError) as err:
                log.debug("daskglm: a direct pass failed (%s); running it as tasks", err)
                values = None
        if values is None:
            self.fallbacks += 1
            return None
        self.runs += 1
        return graph.tree_add(values)

    def close(self) -> None:
        """Let the workers drop the inputs they fetched from others for this fit."""
        if not self._workers or self.client.status != "running":
            return

        async def release():
            # a lost worker's address would be retried for the connect timeout (30 s): bounded
            calls = [self.client.rpc(w).daskglm_pass_release() for w in self._workers]
            await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=2.0)

        with contextlib.suppress(Exception):
            self.client.sync(release)


def balance_chunks(chunks: list, who_has: dict, sizes: dict, threads: dict, budget: int) -> dict:
    """Worker -> indices of the chunks it computes in a direct pass.

    Largest chunks first, each goes to the worker that would finish it soonest (its bytes so
    far per thread): the one holding most of the chunk's bytes, unless another finishes more
    than 5% sooner and can take the bytes it lacks within ``budget`` (fetched once per fit and
    kept). ``who_has``: key -> workers; ``sizes``: key -> bytes; ``threads``: worker -> threads.
    A persisted panel's chunks land where the scheduler put them (the benchmark's 4 chunks of
    52, 20, 20 and 8% of the cells: 72% on one worker); threads share chunks dynamically, so
    the cluster would wait for that worker.
    """
    workers = sorted({w for ws in who_has.values() for w in ws} & set(threads), key=str) or sorted(
        {w for ws in who_has.values() for w in ws}, key=str
    )
    load = dict.fromkeys(workers, 0.0)
    fetched = dict.fromkeys(workers, 0)
    assign: dict = {}
    order = sorted(range(len(chunks)), key=lambda i: (-sum(sizes[k] for k in chunks[i]), i))
    for i in order:
        chunk = chunks[i]
        size = sum(sizes[k] for k in chunk)
        held = {w: sum(sizes[k] for k in chunk if w in who_has[k]) for w in workers}
        home = max(workers, key=lambda w: (held[w], -workers.index(w)))

        def finish(w, size=size):
            return (load[w] + size) / max(int(threads.get(w, 1)), 1)

        best = home
        for w in workers:
            lack = size - held[w]
            if finish(w) < 0.95 * finish(best) and fetched[w] + lack <= budget:
                best = w
        fetched[best] += size - held[best]
        load[best] += size
        assign.setdefault(best, []).append(i)
    return {w: sorted(idx) for w, idx in assign.items()}


def direct_passes() -> bool:
    """Whether passes over a persisted panel run directly on the workers
    (``daskglm.direct-passes``, :class:`DirectPasses`)."""
    value = dask.config.get(DIRECT_PASSES_KEY, True)
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    return bool(value)


@dataclass
class ComputeTarget:
    """The client the passes run on (``None``: dask's threaded scheduler) and how it was chosen."""

    client: object | None
    description: str

    def worker_memory(self) -> int | None:
        """Total memory limit of the workers in bytes (None when unknown or unlimited)."""
        if self.client is None:
            return None
        workers = self.client.scheduler_info().get("workers", {})
        limits = [w.get("memory_limit") or 0 for w in workers.values()]
        if not limits or min(limits) <= 0:
            return None
        return int(sum(limits))

    def threads(self) -> int:
        """Threads of all the workers (1 on dask's threaded scheduler)."""
        if self.client is None:
            return 1
        return max(1, int(sum(self.client.nthreads().values())))


#: at most this many cells per chunk of a panel the fit persists on a cluster (32 MB per
#: float64 full-grid array): the kernels work slab by slab, so a chunk's size costs no memory
#: beyond the persisted data, and a fit's fixed cost grows with the number of tasks
CLUSTER_CHUNK_CELLS = 2**22


def _split_axis(length: int, parts: int, stored: tuple[int, ...]) -> tuple[int, ...]:
    """``length`` cut into ``parts`` nearly equal pieces; on the stored chunks' boundaries when
    those give pieces within 10% of equal (each stored chunk then lands in one piece)."""
    ideal = np.round(np.arange(parts + 1) * length / parts).astype(int)
    bounds = np.concatenate([[0], np.cumsum(stored)]).astype(int)
    snapped = bounds[np.abs(bounds[None, :] - ideal[:, None]).argmin(axis=1)]
    sizes = np.diff(snapped)
    if np.all(sizes > 0) and sizes.max() <= 1.1 * length / parts:
        return tuple(int(v) for v in sizes)
    return tuple(int(v) for v in np.diff(ideal))


def cluster_chunks(chunks: tuple, threads: int, max_cells: int = CLUSTER_CHUNK_CELLS) -> tuple:
    """Chunks of the full grid for a panel persisted on a cluster of ``threads`` threads.

    As few chunks as keep each at most ``max_cells`` cells, a multiple of ``threads`` of them
    (one task per thread and pass), of nearly equal size so that no worker waits for another:
    the grid is cut along its first axis, then the next ones when the first is too short.
    ``chunks`` are the current (stored) chunks, whose boundaries are kept where they allow it.
    """
    shape = tuple(int(sum(c)) for c in chunks)
    cells = int(np.prod(shape, dtype=np.int64))
    want = threads * max(1, math.ceil(cells / (threads * max_cells)))
    out = []
    for length, stored in zip(shape, chunks, strict=True):
        parts = max(1, min(want, length))
        out.append(_split_axis(length, parts, tuple(stored)))
        want = math.ceil(want / parts)
    return tuple(out)


def in_cluster_memory(arrays: list) -> bool:
    """Whether every chunk of every array is a future, i.e. already persisted on a cluster."""
    for arr in arrays:
        dsk = arr.__dask_graph__()
        for key in flatten(arr.__dask_keys__()):
            if type(dsk[key]).__name__ != "Future":
                return False
    return True


def persist_panel(panel: Panel, target: ComputeTarget, chunks=None) -> tuple[Panel, str]:
    """The panel with its arrays persisted in the cluster's memory, and a note on the chunks.

    Unless the user chose ``chunks=``, the panel is first rechunked by :func:`cluster_chunks`
    (balanced chunks, one task per thread and pass where memory allows). A panel the user
    persisted on the cluster already (:func:`in_cluster_memory`) is rechunked only when its
    chunks are many (more than two per thread) and a second copy takes at most a quarter of
    the workers' memory: the user's copy stays in memory while they hold it.
    """
    note = ""
    if chunks is None and target.client is not None:
        threads = target.threads()
        n_chunks = int(np.prod([len(c) for c in panel.chunks]))
        if in_cluster_memory(panel.arrays):
            mem = target.worker_memory()
            nbytes = sum(int(a.nbytes) for a in panel.arrays)
            small = mem is None or nbytes <= 0.25 * mem
            wanted = n_chunks > 2 * threads and small
        else:
            wanted = True
        new = cluster_chunks(panel.chunks, threads) if wanted else tuple(panel.chunks)
        if new != tuple(panel.chunks):
            features = [a.n_features is not None for a in panel.layout.args]
            axes = [a.axes for a in panel.layout.args]
            arrays = graph.align_arrays(panel.arrays, axes, features, new)
            note = (
                f"; rechunked from {n_chunks} to {int(np.prod([len(c) for c in new]))} chunks of "
                f"about {int(np.prod([max(c) for c in new]))} cells"
            )
            panel = replace(panel, arrays=arrays, chunks=new)
    return replace(panel, arrays=graph.persist_arrays(panel.arrays)), note


def _connect(address: str, security):
    from distributed import Client

    try:
        return Client(address, security=security, timeout="20s", set_as_default=False)
    except (OSError, TypeError, ValueError) as err:  # TypeError: tls:// without an SSL context
        raise ConnectionError(
            f"client={address!r}: cannot reach a dask scheduler there ({err}). Start one with "
            "`dask scheduler` (see cluster/README.md), check the address and port, and for "
            "tls:// give the certificates via security= or dask's distributed.comm.tls settings"
        ) from err


def _active_client():
    """The process's active distributed client, or None. Where ``distributed`` was never imported
    there can be none, and it is not imported to find that out (it and what it loads, tornado,
    msgpack, click..., are ~20 MB of a threaded fit's peak and 0.2-0.3 s)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


@contextlib.contextmanager
def compute_target(client=None, security=None, checkpoint=None) -> Iterator[ComputeTarget]:
    """Resolve ``client=`` (see the module docstring) for the duration of a fit.

    On a distributed client the fit's passes are computed by a :class:`PassWatchdog`, whose
    :class:`ClusterLostError` names ``checkpoint`` (the fit's ``checkpoint=``) to resume from.
    """
    timeout = no_workers_timeout()
    owned = []
    try:
        if client is None:
            c = _active_client()
            if c is not None:
                target = ComputeTarget(c, f"active client {c.scheduler.address}")
            else:
                address = dask.config.get("scheduler-address", None)
                if address:
                    c = _connect(address, security)
                    owned.append(c)
                    target = ComputeTarget(c, f"scheduler {address} (from dask config)")
                else:
                    target = ComputeTarget(None, "dask's threaded scheduler")
        elif isinstance(client, str) and client == "local":
            from distributed import Client, LocalCluster

            cores = os.cpu_count() or 1
            n_workers = max(1, cores // 2)
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=max(1, cores // n_workers),
                dashboard_address=":0",
            )
            owned.append(cluster)
            c = Client(cluster, set_as_default=False)
            owned.insert(0, c)
            target = ComputeTarget(c, f"LocalCluster ({n_workers} workers), dashboard {c.dashboard_link}")
        elif isinstance(client, str):
            if "://" not in client:
                raise ValueError(
                    f"client={client!r} is not a scheduler address; use 'tcp://host:port' or "
                    "'tls://host:port', 'local' for a LocalCluster, None, or a distributed.Client"
                )
            c = _connect(client, security)
            owned.append(c)
            target = ComputeTarget(c, f"scheduler {client}")
        elif hasattr(client, "scheduler_info") and hasattr(client, "as_current"):
            target = ComputeTarget(client, f"client {client.scheduler.address}")
        else:
            raise TypeError(
                f"client={client!r} ({type(client).__name__}) is not understood; use None, 'local', "
                "a scheduler address such as 'tcp://10.0.0.1:8786', or a distributed.Client"
            )
        log.info("daskglm: computing on %s", target.description)
        if target.client is None:
            yield target
        else:
            direct = (
                DirectPasses(target.client) if prepare_workers(target.client) and direct_passes() else None
            )
            watchdog = PassWatchdog(target.client, timeout, checkpoint, direct)
            token = graph.PASS_COMPUTE.set(watchdog)
            try:
                with target.client.as_current(), dask.config.set(scheduler=target.client):
                    yield target
            finally:
                graph.PASS_COMPUTE.reset(token)
                if direct is not None:
                    direct.close()
    finally:
        for obj in owned:
            with contextlib.suppress(Exception):
                obj.close()


def persist_decision(persist, nbytes: int, target: ComputeTarget, from_store: bool) -> tuple[bool, str]:
    """Whether to keep the full-grid arrays in cluster memory, and why.

    ``"auto"`` persists when a distributed cluster runs the fit and the panel's arrays take at
    most half of the workers' total memory limit: read from the store once, or, for
    numpy-backed data (``from_store=False``), sent from this process once instead of inside
    every pass's graph. Otherwise every pass streams the chunks from the store (or sends them).
    On dask's threaded scheduler nothing is persisted.
    """
    gb = nbytes / 1e9
    if persist is True:
        return True, f"persist=True ({gb:.2f} GB)"
    if persist is False:
        return False, "persist=False: streamed from the store on every pass"
    if persist != "auto":
        raise ValueError(f"persist={persist!r} must be 'auto', True or False")
    if target.client is None:
        return False, "no distributed cluster: chunks are read on every pass"
    how = "persisted" if from_store else "sent to the workers once and persisted (numpy data)"
    mem = target.worker_memory()
    if mem is None:
        return True, f"{gb:.2f} GB {how} (workers have no memory limit)"
    if nbytes <= 0.5 * mem:
        return True, f"{gb:.2f} GB {how} (<= half of the workers' {mem / 1e9:.2f} GB)"
    if not from_store:
        return False, (
            f"{gb:.2f} GB of numpy data sent with every pass (> half of the workers' "
            f"{mem / 1e9:.2f} GB): write the panel to a zarr store and fit the store instead"
        )
    return False, f"{gb:.2f} GB streamed from the store (> half of the workers' {mem / 1e9:.2f} GB)"
