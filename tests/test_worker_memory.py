"""The workers' allocator settings (:func:`daskglm.runtime.workers.malloc_thresholds`).

A small worker must give chunk-sized arrays back to the system when they are freed (each its own
``mmap``) and keep only slab-sized temporaries on the heap: with 32-64 MiB thresholds a 0.75 GB
worker of the 1e8-cell gravity fit held 247 MB of freed heap and paused at its memory limit with
no data in memory (``benchmarks/GRAVITY.md``).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from daskglm.runtime.workers import (
    MMAP_THRESHOLD_MAX,
    MMAP_THRESHOLD_MIN,
    malloc_thresholds,
)

MiB = 2**20


def test_thresholds_scale_with_the_memory_limit():
    trim = 64 * MiB
    assert malloc_thresholds(trim, 750_000_000) == (750_000_000 // 64, 750_000_000 // 128)
    # a 4 GB worker keeps 16 MiB chunks (2**22 float32 cells) on its heap
    assert malloc_thresholds(trim, 4_000_000_000) == (4_000_000_000 // 64, 4_000_000_000 // 128)
    assert malloc_thresholds(trim, 4_000_000_000)[1] > 16 * MiB
    # large workers: the configured trim, glibc's largest mmap threshold
    assert malloc_thresholds(trim, 64 * 2**30) == (trim, MMAP_THRESHOLD_MAX)
    # no limit: as before the scaling (both at trim, mmap at most 32 MiB)
    assert malloc_thresholds(trim, None) == (trim, MMAP_THRESHOLD_MAX)
    assert malloc_thresholds(16 * MiB, 0) == (16 * MiB, 16 * MiB)
    # a tiny worker: mmap threshold at its floor, never above trim
    assert malloc_thresholds(trim, 100 * MiB) == (100 * MiB // 64, MMAP_THRESHOLD_MIN)
    assert malloc_thresholds(trim, 32 * MiB) == (MiB // 2, MiB // 2)


_PROBE = """
import ctypes, sys
import numpy as np
from daskglm.runtime.workers import malloc_thresholds, set_malloc_thresholds

class M(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = M
limit = int(sys.argv[1]) or None
assert set_malloc_thresholds(*malloc_thresholds(64 * 2**20, limit))
before = libc.mallinfo2().hblkhd
chunk = np.ones(2**20)  # an 8 MiB chunk-sized array
slab = np.ones(2**14)  # a 128 KiB slab temporary
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
@pytest.mark.parametrize(("limit", "mapped"), [(750_000_000, True), (0, False)])
def test_chunk_sized_arrays_are_their_own_mmap_on_a_small_worker(limit, mapped):
    """With a 0.75 GB limit an 8 MiB array is mmapped (given back when freed) and a slab
    temporary is not; without a limit (32 MiB threshold) neither is."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(limit)], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0 and "mallinfo2" in out.stderr:
        pytest.skip("glibc without mallinfo2")
    assert out.returncode == 0, out.stderr
    mmapped = int(out.stdout.split()[-1])
    assert (mmapped >= 8 * MiB) is mapped
    assert mmapped < 8 * MiB + 2**14 * 8  # the slab temporary is never its own mmap
