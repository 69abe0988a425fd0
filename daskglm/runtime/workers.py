"""What a fit sets up on every worker of a distributed cluster (a ``WorkerPlugin``).

dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to the system at
once. That also pins glibc's mmap threshold at 128 KiB: every temporary of a chunk kernel
larger than that is a fresh ``mmap`` whose pages fault in again, and the numpy kernel ran 4-5x
slower per cell in a worker than in the client process (about 0.15 s against 0.03 s for a
1e6-cell chunk of the 28-coefficient Poisson benchmark). :class:`WorkerMalloc` raises both
thresholds on each worker (glibc's ``mallopt``; a no-op elsewhere), scaled to the worker's
memory limit (:func:`malloc_thresholds`): a worker keeps at most ``trim`` bytes of freed heap per
arena (64 MiB, or a 64th of its memory limit if smaller), far more than a kernel's slab-sized
temporaries, and allocations from ``limit / 128`` bytes up (between 1 and 32 MiB) are their own
``mmap``, returned to the system when freed.

Why scaled: with both thresholds at 32-64 MiB, every chunk-sized array (a 4 MB zarr chunk, a
chunk's 8 MB ``W``, the level arrays a pass receives) came from malloc's arenas, and a worker's
threads each have one: in the 1e8-cell gravity fit a 0.75 GB worker held 247 MB of freed but
unreturned heap beside 106 MB in use (``mallinfo2``) and paused at its memory limit with no data
in memory (``benchmarks/GRAVITY.md``); with ``limit / 128`` (5.6 MiB there) it ran. Chunk-sized
arrays are allocated once per chunk, so an ``mmap`` each costs little (filling a fresh 16 MiB
``mmap`` took 3.7 ms against 2.1 ms on reused heap), and a 4 GB worker still keeps 16 MiB arrays
(``2**22`` float32 cells) on its heap; the slab temporaries of the kernels (128-512 KiB) always
stay below the mmap threshold.

Set ``daskglm.worker-malloc-trim`` (dask configuration; environment
``DASK_DASKGLM__WORKER_MALLOC_TRIM``) to ``False`` to leave the workers' allocator as dask
configured it. Imported only when a fit runs on a distributed cluster.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["FETCHED_MAX_BYTES", "PassRunner", "WorkerMalloc", "malloc_thresholds", "set_malloc_thresholds"]

#: glibc's ``mallopt`` parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)
MMAP_THRESHOLD_MAX = 32 * 2**20


#: a worker's memory limit over its trim threshold and over its mmap threshold
TRIM_DIVISOR = 64
MMAP_DIVISOR = 128
#: the smallest mmap threshold :func:`malloc_thresholds` gives (the numpy kernel's slab
#: temporaries are 512 KiB: below it they stay on the heap)
MMAP_THRESHOLD_MIN = 2**20


def malloc_thresholds(trim: int, limit: int | None = None) -> tuple[int, int]:
    """``(trim, mmap)`` thresholds in bytes for a worker whose memory limit is ``limit`` bytes
    (``None`` or 0: no limit), with ``trim`` the configured most (``daskglm.worker-malloc-trim``).

    ``trim`` is capped at ``limit / 64``; the mmap threshold is ``limit / 128`` kept between
    1 MiB and 32 MiB (glibc's largest), and never above ``trim``. Without a limit both are
    ``trim`` (the mmap threshold at most 32 MiB)."""
    trim = int(trim)
    if not limit:
        return trim, min(trim, MMAP_THRESHOLD_MAX)
    trim = min(trim, int(limit) // TRIM_DIVISOR)
    mmap = min(max(int(limit) // MMAP_DIVISOR, MMAP_THRESHOLD_MIN), MMAP_THRESHOLD_MAX, trim)
    return trim, mmap


def set_malloc_thresholds(trim: int, mmap: int | None = None) -> bool:
    """Set glibc's trim threshold to ``trim`` bytes and its mmap threshold to ``mmap`` bytes
    (default ``min(trim, 32 MiB)``) in this process; ``False`` where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    trim = int(min(trim, 2**31 - 1))
    mmap = int(min(trim if mmap is None else mmap, MMAP_THRESHOLD_MAX))
    return bool(mallopt(M_TRIM_THRESHOLD, trim)) and bool(mallopt(M_MMAP_THRESHOLD, mmap))


class WorkerMalloc(WorkerPlugin):
    """Raise glibc's trim and mmap thresholds on every worker (see the module docstring) to
    :func:`malloc_thresholds` of ``trim`` and the worker's memory limit.

    Registered once per cluster (``idempotent``): workers that join later get it too.
    """

    name = "daskglm-worker-malloc"
    idempotent = True

    def __init__(self, trim: int):
        self.trim = int(trim)

    def setup(self, worker) -> None:
        limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        set_malloc_thresholds(*malloc_thresholds(self.trim, limit))


#: bytes of inputs held by another worker that :class:`PassRunner` keeps after fetching them
#: (small covariates off the full grid), per worker; above it they are fetched on every pass
FETCHED_MAX_BYTES = 256 * 2**20


def _own_memory(value):
    """A fetched array in memory of its own, aligned and C-contiguous.

    Deserialised arrays are views into the message's frames, which need not be aligned for
    their dtype (a float64 chunk at an offset of 36 bytes was seen): the compiled kernel then
    runs a slower, unaligned specialisation on it."""
    import numpy as np

    if isinstance(value, np.ndarray) and not (value.flags.aligned and value.flags.c_contiguous):
        return np.array(value, order="C", copy=True)
    return value


class PassRunner(WorkerPlugin):
    """Runs a fit's passes over persisted chunks on the worker that holds them, by a direct
    request from the client (handler ``daskglm_pass``), without a task graph.

    On a distributed cluster a task-graph pass costs 15-30 ms beyond its kernels (the client's
    graph reaches the scheduler, which sends the tasks to the workers; the results go back
    through the scheduler): a third of an in-memory Newton iteration at 2e6 cells. The client
    (:class:`daskglm.runtime.scheduling.DirectPasses`) sends each worker the pickled kernel and the
    keys of the chunks it holds; the worker runs them on its own threads and returns the
    vectors. Inputs that another worker holds (a covariate off the full grid) are fetched
    from it and kept until the fit ends (handler ``daskglm_pass_release``), up to
    :data:`FETCHED_MAX_BYTES`. A worker that is not running (paused at its memory limit,
    closing) or lacks a key answers so and the client runs the pass as tasks instead.
    """

    name = "daskglm-passes"
    idempotent = True

    def setup(self, worker) -> None:
        self.worker = worker
        self.fetched: dict = {}
        self.fetched_bytes = 0
        worker.handlers["daskglm_pass"] = self.run_pass
        worker.handlers["daskglm_pass_release"] = self.release
        from ..kernels import preload

        preload.start()  # the compiled kernels load in a thread while the worker reads its chunks

    def release(self) -> int:
        """Drop the inputs fetched from other workers; returns how many there were."""
        n = len(self.fetched)
        self.fetched, self.fetched_bytes = {}, 0
        return n

    async def _inputs(self, keys: set, who_has: dict) -> dict | None:
        """The values of ``keys`` (held here, fetched before, or fetched now from the workers
        ``who_has`` names); ``None`` when one cannot be had."""
        from distributed.worker import get_data_from_worker

        data = self.worker.data
        out = {k: data[k] for k in keys if k in data}
        out.update({k: self.fetched[k] for k in keys if k not in out and k in self.fetched})
        missing = [k for k in keys if k not in out]
        by_holder: dict = {}
        for k in missing:
            holders = [w for w in who_has.get(k, ()) if w != self.worker.address]
            if not holders:
                return None
            by_holder.setdefault(holders[0], []).append(k)
        for holder, ks in by_holder.items():
            try:
                response = await get_data_from_worker(self.worker.rpc, ks, holder, who=self.worker.address)
            except OSError:
                return None
            got = response.get("data", {}) if response.get("status") == "OK" else {}
            if any(k not in got for k in ks):
                return None
            for k in ks:
                out[k] = value = _own_memory(got[k])
                size = int(getattr(value, "nbytes", 0))
                if self.fetched_bytes + size <= FETCHED_MAX_BYTES:
                    self.fetched[k] = value
                    self.fetched_bytes += size
        return out

    async def run_pass(self, function: bytes, chunks: list, who_has: list) -> dict:
        """``function(*chunk)`` for each chunk (a list of keys) on this worker's threads:
        ``{"status": "OK", "values": [...]}``, or another status with the reason."""
        import asyncio

        from distributed.core import Status
        from distributed.protocol import pickle, to_serialize

        worker = self.worker
        if worker.status != Status.running:
            return {"status": "not-running", "reason": str(worker.status)}
        chunks = [[tuple(k) if isinstance(k, list) else k for k in c] for c in chunks]
        who_has = {tuple(k) if isinstance(k, list) else k: v for k, v in who_has}
        inputs = await self._inputs({k for c in chunks for k in c}, who_has)
        if inputs is None:
            return {"status": "missing"}
        func = pickle.loads(function)
        loop = asyncio.get_running_loop()
        values = await asyncio.gather(
            *(loop.run_in_executor(worker.executor, func, *(inputs[k] for k in c)) for c in chunks)
        )
        return {"status": "OK", "values": to_serialize(list(values))}
