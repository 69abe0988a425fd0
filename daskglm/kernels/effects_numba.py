"""A compiled product with the effects' block (numba; the numpy version is the reference).

The product ``A V`` spreads every effect's level values onto the cells, weights them by
``W = -w h`` and reduces them back onto every effect's grid. In numpy that is a dozen sweeps
over a ``(k,) + chunk`` temporary; here it is one loop over the chunk's *rows* (runs of cells
along its last axis). Along a row an effect's level is either the same for every cell (the
effect does not span the last axis: one value, gathered once, and one scatter of the row's
sum) or the next level for the next cell (it does: a contiguous run of its level array). So a
row is a few short loops over contiguous memory that vectorise, and the only per-row
bookkeeping is where each effect's run starts (:func:`row_layout`, ``(E, rows)`` integers:
a 2e6-cell panel with rows of 50 needs 40,000 per effect, where a per-cell index needed
2e6 and 48 MB in all).

In process (dask's threaded scheduler) :func:`global_rows` numbers the rows' levels in the
whole effect grids, so :func:`product_rows` reads and writes the full level arrays directly;
on a cluster each chunk's task gets its piece of them (:func:`matvec`).

``ENGINE`` is the process's default engine (:func:`daskglm.kernels.engines.default_engine`:
``DASKGLM_ENGINE``, else ``"numba"`` when numba imports).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .engines import default_engine

__all__ = ["ENGINE", "row_layout", "global_rows", "matvec", "product_rows"]

try:  # numba is an optional accelerator: the numpy kernel is the reference and fallback
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

try:  #: which kernel the products with the effects' block use
    ENGINE = default_engine()
except ValueError:  # an unknown DASKGLM_ENGINE: dg.fit reports it (engines.resolve_engine)
    ENGINE = "numba" if numba is not None else "numpy"


def _check_increasing(axes: tuple[tuple[int, ...], ...]) -> None:
    for ax in axes:
        if list(ax) != sorted(set(ax)):
            raise ValueError(f"an effect's axes must be increasing (panel order), got {ax}")


@lru_cache(maxsize=64)
def row_layout(
    axes: tuple[tuple[int, ...], ...], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, int, list]:
    """Where each effect's levels sit along the rows of a chunk of ``shape``.

    Every effect's axes must be increasing (panel order, as :class:`Effect` has them): then
    the last axis, where an effect spans it, has stride 1 in its grid.

    Parameters
    ----------
    axes : tuple of tuple of int
        Each effect's chunk axes.
    shape : tuple of int
        The chunk's shape (at least one axis).

    Returns
    -------
    base : ndarray of int64, (E, rows)
        For each effect and row (the cells along the last axis), the position of the row's
        first cell's level in the concatenation of the effects' local level arrays.
    step : ndarray of int64, (E,)
        1 where the effect spans the last axis (the row's levels are consecutive), else 0.
    length : int
        The row length (the last axis).
    parts : list of (int, tuple)
        Where each effect's part of the concatenation starts, and its local grid.
    """
    _check_increasing(axes)
    m = len(shape)
    lead, length = shape[:-1], shape[-1]
    rows = int(np.prod(lead))
    index = np.indices(lead, dtype=np.int64).reshape(len(lead), rows) if lead else np.zeros((0, 1), np.int64)
    base, step, parts, start = [], [], [], 0
    for ax in axes:
        local = tuple(shape[a] for a in ax)
        # C-order strides of the effect's local grid, in elements
        strides = [int(np.prod(local[k + 1 :])) for k in range(len(ax))]
        b = np.full(rows, start, dtype=np.int64)
        st = 0
        for a, s in zip(ax, strides, strict=True):
            if a == m - 1:
                st = s  # the last of the effect's axes (they are in panel order): stride 1
            else:
                b += index[a] * s
        base.append(b)
        step.append(st)
        parts.append((start, local))
        start += int(np.prod(local))
    out = np.ascontiguousarray(np.stack(base)) if base else np.zeros((0, rows), np.int64)
    out.flags.writeable = False
    steps = np.array(step, dtype=np.int64)
    steps.flags.writeable = False
    return out, steps, int(length), parts


#: rows shorter than this take the kernel's per-cell loop
SHORT_ROW = 3

if numba is not None:

    @numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
    def _product_rows(W, base, step, length, V, out):  # pragma: no cover - compiled
        # V, out: (k, levels). Per row and column: the effects' levels summed (those constant
        # along the row folded into one number), times W, scattered back to every effect (a
        # run, or the row's sum). Columns inside rows: W's row stays in L1 for the
        # other columns. The runs are slices (views): indexed by the loop counter alone, LLVM
        # drops numba's negative-index wraparound and vectorises (2.4x faster than indexing
        # the whole array at an offset); one and two runs (the usual designs) are one loop.
        rows = base.shape[1]
        n_eff = base.shape[0]
        k = V.shape[0]
        L = length
        s = np.empty(L)
        u = np.empty(L)
        runs = np.empty(n_eff, np.int64)
        consts = np.empty(n_eff, np.int64)
        n_runs = 0
        n_consts = 0
        for e in range(n_eff):
            if step[e]:
                runs[n_runs] = e
                n_runs += 1
            else:
                consts[n_consts] = e
                n_consts += 1
        if L < SHORT_ROW:
            # rows of one or two cells: a gather-sum-scatter per cell (the row's loops would
            # cost more than its cells: 1.4x at rows of 2 with three effects)
            pos = np.empty(n_eff, np.int64)
            for r in range(rows):
                for e in range(n_eff):
                    pos[e] = base[e, r]
                for t in range(L):
                    wt = W[r * L + t]
                    for c in range(k):
                        Vc = V[c]
                        Oc = out[c]
                        x = 0.0
                        for e in range(n_eff):
                            x += Vc[pos[e]]
                        x *= wt
                        for e in range(n_eff):
                            Oc[pos[e]] += x
                    for e in range(n_eff):
                        pos[e] += step[e]
            return
        for r in range(rows):
            w = W[r * L : (r + 1) * L]
            for c in range(k):
                Vc = V[c]
                Oc = out[c]
                c0 = 0.0
                for q in range(n_consts):
                    c0 += Vc[base[consts[q], r]]
                tot = 0.0
                if n_runs == 2:
                    o1 = base[runs[0], r]
                    o2 = base[runs[1], r]
                    a1 = Vc[o1 : o1 + L]
                    a2 = Vc[o2 : o2 + L]
                    for t in range(L):
                        x = (c0 + a1[t] + a2[t]) * w[t]
                        u[t] = x
                        tot += x
                elif n_runs == 1:
                    o1 = base[runs[0], r]
                    a1 = Vc[o1 : o1 + L]
                    for t in range(L):
                        x = (c0 + a1[t]) * w[t]
                        u[t] = x
                        tot += x
                else:
                    for t in range(L):
                        s[t] = c0
                    for q in range(n_runs):
                        o1 = base[runs[q], r]
                        a1 = Vc[o1 : o1 + L]
                        for t in range(L):
                            s[t] += a1[t]
                    for t in range(L):
                        x = s[t] * w[t]
                        u[t] = x
                        tot += x
                for e in range(n_eff):
                    o1 = base[e, r]
                    if step[e]:
                        dst = Oc[o1 : o1 + L]
                        for t in range(L):
                            dst[t] += u[t]
                    else:
                        Oc[o1] += tot


def global_rows(
    axes: tuple[tuple[int, ...], ...], grids: tuple[tuple[int, ...], ...], index: tuple[slice, ...]
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`row_layout` of the chunk at ``index`` (slices of the full grid) in the numbering
    of the *whole* effect grids (``grids``, concatenated): the rows then read and write the
    full level arrays directly, with no per-chunk cut and gather of them.

    Returns ``base`` (E, rows), ``step`` (E,) and the row length.
    """
    _check_increasing(axes)
    shape = tuple(sl.stop - sl.start for sl in index)
    m = len(shape)
    lead = shape[:-1]
    rows = int(np.prod(lead))
    local = np.indices(lead, dtype=np.int64).reshape(len(lead), rows) if lead else np.zeros((0, 1), np.int64)
    base, step, start = [], [], 0
    for ax, grid in zip(axes, grids, strict=True):
        strides = [int(np.prod(grid[k + 1 :])) for k in range(len(ax))]
        b = np.full(rows, start, dtype=np.int64)
        st = 0
        for a, s in zip(ax, strides, strict=True):
            b += index[a].start * s
            if a == m - 1:
                st = s
            else:
                b += local[a] * s
        base.append(b)
        step.append(st)
        start += int(np.prod(grid))
    out = np.ascontiguousarray(np.stack(base)) if base else np.zeros((0, rows), np.int64)
    return out, np.array(step, dtype=np.int64), int(shape[-1])


def product_rows(chunks: list, Vt: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``A V`` over some chunks, each ``(W, base, step, length)`` from :func:`global_rows`,
    for ``Vt`` the whole level arrays as ``(k, levels)``; their sum into ``out`` (made if None)."""
    out = np.zeros_like(Vt) if out is None else out
    for W, base, step, length in chunks:
        if W.size:
            _product_rows(W.reshape(-1), base, step, length, Vt, out)
    return out


def matvec(axes: tuple[tuple[int, ...], ...], W: np.ndarray, local_v) -> list:
    """``A V`` on one chunk (its local level arrays, grid + (k,) each) by the compiled loop."""
    base, step, length, parts = row_layout(axes, tuple(W.shape))
    k = local_v[0].shape[-1]
    V = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, k) for v in local_v]).T.copy()
    out = np.zeros_like(V)
    if W.size:
        _product_rows(np.ascontiguousarray(W, dtype=np.float64).reshape(-1), base, step, length, V, out)
    return [out[:, s : s + int(np.prod(g))].T.reshape(g + (k,)) for s, g in parts]
