"""A compiled product with the effects' block (numba; the numpy version is the reference).

The product ``A V`` spreads every effect's level values onto the cells, weights them by
``W = -w h`` and reduces them back onto every effect's grid. In numpy that is a dozen sweeps
over a ``(k,) + chunk`` temporary; here it is one loop over the cells that gathers the
``k`` values of each of the cell's levels, and scatters ``W`` times their sum back. The
cell-to-level indices depend only on the chunk's shape and the effects, so they are made once
per process and shape (:func:`level_index`).

``ENGINE`` is the process's default engine (:func:`daskglm.kernels.engines.default_engine`:
``DASKGLM_ENGINE``, else ``"numba"`` when numba imports).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .engines import default_engine

__all__ = ["ENGINE", "level_index", "matvec"]

try:  # numba is an optional accelerator: the numpy kernel is the reference and fallback
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

try:  #: which kernel the products with the effects' block use
    ENGINE = default_engine()
except ValueError:  # an unknown DASKGLM_ENGINE: dg.fit reports it (engines.resolve_engine)
    ENGINE = "numba" if numba is not None else "numpy"


@lru_cache(maxsize=64)
def level_index(axes: tuple[tuple[int, ...], ...], shape: tuple[int, ...]) -> tuple[np.ndarray, list]:
    """For a chunk of ``shape`` and effects on ``axes``: each cell's position in the
    concatenation of the effects' local level arrays (``(E, cells)``), and where each effect's
    part starts and its local grid."""
    grids = np.indices(shape).reshape(len(shape), -1)
    idx, parts, start = [], [], 0
    for ax in axes:
        local = tuple(shape[a] for a in ax)
        flat = (
            np.ravel_multi_index(tuple(grids[a] for a in ax), local) if ax else np.zeros(grids.shape[1], int)
        )
        idx.append(flat + start)
        parts.append((start, local))
        start += int(np.prod(local))
    out = np.ascontiguousarray(np.stack(idx).astype(np.int64))
    out.flags.writeable = False
    return out, parts


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _matvec_cells(W, idx, Vt, out):  # pragma: no cover - compiled
        # column by column: a scalar gather-sum-scatter per cell, 2-3x faster than carrying
        # a k-vector per cell
        n_cells = W.shape[0]
        n_eff = idx.shape[0]
        for c in range(Vt.shape[0]):
            v = Vt[c]
            o = out[c]
            for n in range(n_cells):
                s = 0.0
                for e in range(n_eff):
                    s += v[idx[e, n]]
                s *= W[n]
                for e in range(n_eff):
                    o[idx[e, n]] += s


def matvec(axes: tuple[tuple[int, ...], ...], W: np.ndarray, local_v) -> list:
    """``A V`` on one chunk by the compiled loop (see the module docstring)."""
    idx, parts = level_index(axes, W.shape)
    k = local_v[0].shape[-1]
    Vt = np.ascontiguousarray(
        np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, k) for v in local_v]).T
    )
    out = np.zeros_like(Vt)
    _matvec_cells(np.ascontiguousarray(W, dtype=np.float64).reshape(-1), idx, Vt, out)
    out = out.T
    return [out[s : s + int(np.prod(g))].reshape(g + (k,)) for s, g in parts]
