"""Typed lists of column arrays, built by cached compiled functions (numpy + numba, no dask).

The compiled sweep (:mod:`daskglm.kernels.chunk_numba`) takes the full-grid columns of a chunk
as a numba typed list of 1-D arrays (no copy into one matrix). ``numba.typed.List``'s own
constructor and ``append`` are compiled functions of numba that are not cached on disk: a fresh
process compiled them at its first fit, about 0.1 s each per item type (0.2 s for float64 and as
much again for float32 columns), inside the fit's setup pass and again on every worker. The
functions here do the same through ``cache=True`` functions of this module, so a fresh process
loads them from numba's cache in a few milliseconds.

The lists hold read-only arrays (``Array(dtype, 1, "C", readonly=True)``): the sweep only
reads its columns, and read-only inputs (pandas' copy-on-write columns, memory maps) then need
no unsafe cast; writable arrays are appended as they are (a safe cast).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import types
from numba.typed import List

__all__ = ["COLUMN_TYPES", "column_list"]

#: the item type of the column list for each column dtype the sweep takes
COLUMN_TYPES = {
    np.dtype(np.float64): types.Array(types.float64, 1, "C", readonly=True),
    np.dtype(np.float32): types.Array(types.float32, 1, "C", readonly=True),
}
_F64 = COLUMN_TYPES[np.dtype(np.float64)]
_F32 = COLUMN_TYPES[np.dtype(np.float32)]


@numba.njit(cache=True, nogil=True)
def _empty_f64():  # pragma: no cover - compiled
    return List.empty_list(_F64)


@numba.njit(cache=True, nogil=True)
def _empty_f32():  # pragma: no cover - compiled
    return List.empty_list(_F32)


@numba.njit(cache=True, nogil=True)
def _push(out, column):  # pragma: no cover - compiled
    out.append(column)


_EMPTY = {np.dtype(np.float64): _empty_f64, np.dtype(np.float32): _empty_f32}


def column_list(columns: Sequence[np.ndarray], dtype) -> List:
    """A numba typed list of ``columns`` as 1-D C-contiguous arrays of ``dtype`` (float64 or
    float32), item type :data:`COLUMN_TYPES` ``[dtype]``; columns of another dtype or layout
    are converted (copied) first.

    Raises
    ------
    ValueError
        For a dtype other than float64 and float32.
    """
    dt = np.dtype(dtype)
    if dt not in _EMPTY:
        raise ValueError(f"column_list: dtype {dt} is not a column dtype of the sweep (float64, float32)")
    out = _EMPTY[dt]()
    for c in columns:
        _push(out, np.ascontiguousarray(c, dtype=dt).reshape(-1))
    return out
