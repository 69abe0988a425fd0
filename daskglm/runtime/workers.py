"""What a fit sets up on every worker of a distributed cluster (a ``WorkerPlugin``).

dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to the system at
once. That also pins glibc's mmap threshold at 128 KiB: every temporary of a chunk kernel
larger than that is a fresh ``mmap`` whose pages fault in again, and the numpy kernel ran 4-5x
slower per cell in a worker than in the client process (about 0.15 s against 0.03 s for a
1e6-cell chunk of the 28-coefficient Poisson benchmark). :class:`WorkerMalloc` raises both
thresholds on each worker (glibc's ``mallopt``; a no-op elsewhere), so a worker keeps at most
``trim`` bytes of freed heap (64 MiB, or a sixteenth of the worker's memory limit if smaller),
far more than a kernel's slab-sized temporaries.

Set ``daskglm.worker-malloc-trim`` (dask configuration; environment
``DASK_DASKGLM__WORKER_MALLOC_TRIM``) to ``False`` to leave the workers' allocator as dask
configured it. Imported only when a fit runs on a distributed cluster.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["WorkerMalloc", "set_malloc_thresholds"]

#: glibc's ``mallopt`` parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)
MMAP_THRESHOLD_MAX = 32 * 2**20


def set_malloc_thresholds(trim: int) -> bool:
    """Set glibc's trim threshold to ``trim`` bytes and its mmap threshold to
    ``min(trim, 32 MiB)`` in this process; ``False`` where the C library is not glibc."""
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
    return bool(mallopt(M_TRIM_THRESHOLD, trim)) and bool(
        mallopt(M_MMAP_THRESHOLD, min(trim, MMAP_THRESHOLD_MAX))
    )


class WorkerMalloc(WorkerPlugin):
    """Raise glibc's trim and mmap thresholds on every worker (see the module docstring), to
    ``trim`` bytes or a sixteenth of the worker's memory limit, whichever is smaller.

    Registered once per cluster (``idempotent``): workers that join later get it too.
    """

    name = "daskglm-worker-malloc"
    idempotent = True

    def __init__(self, trim: int):
        self.trim = int(trim)

    def setup(self, worker) -> None:
        limit = getattr(getattr(worker, "memory_manager", None), "memory_limit", None)
        set_malloc_thresholds(min(self.trim, limit // 16) if limit else self.trim)
