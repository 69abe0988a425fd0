"""The Gaussian gradient ``X' w (y - offset - X b)`` in double-double arithmetic (numpy only).

Why: near the optimum the gradient is a sum of large terms that cancel. Computed in float64
its error is about ``eps * |X|' |w r|``, independent of how close ``b`` is to the optimum, and
mapped through the inverse Hessian that error moves the estimates. On NIST's Wampler5 (x =
0..20, covariates up to x^5 = 3.2e6, residuals of 2e7) a float64 gradient moves them by 2e-7
to 5e-6 relative, so no solver that stops where its gradient vanishes gets closer; the error
comes from the products ``x_ij r_i`` and their sum (the residual's own rounding moves them by
1e-9). Newton's QR pass accumulates that gradient with the same arithmetic (:mod:`daskglm.kernels.qr`);
the gradient-only solvers and Newton-Schulz use this pass instead, once, for their last step
(:meth:`~daskglm.frontend.objective.PanelObjective.accurate_evaluation`).

How: error-free transformations (Knuth's TwoSum, Dekker's TwoProduct with Veltkamp's split;
:mod:`daskglm.kernels.double_double`, re-exported here), vectorised over the cells, so the result does
not depend on the platform's long double.
Per slab of the chunk, with the design formed a piece at a time (:func:`~daskglm.kernels.qr.design_rows`):

* ``eta = X b + offset`` and ``r = y - eta`` as unevaluated sums ``hi + lo`` of float64s;
* ``w r`` (TwoProduct), then ``X' (w r)``: each product ``x_ij v_i`` split exactly into
  ``p + e`` and the ``p`` summed by a pairwise cascade of TwoSums (:func:`dd_sum`);
* the chunk returns each coefficient's sum as a (hi, lo) pair; the tree combine adds pairs the
  same way (:func:`accurate_combine`).

The result has the accuracy of a float64 computation in twice the precision: an error of
about ``eps^2 |X|' |w r|`` (``eps = 2^-53``) plus the final rounding, i.e. on Wampler5 about
``1e-30`` of the terms instead of ``1e-16``. It costs about 30 flops per design value, several
normal passes; the solvers spend it once or twice per fit, never in their loops.

The Hessian ``-X' w X`` is summed the same way (:func:`accurate_hessian_chunk`, one pass,
``P^2`` products per row) where the float64 one is too ill-conditioned for the inverse-free
preconditioner: on NIST's Filip (x, ..., x^10) its equilibrated condition number is 1.5e19,
and the float64 one has a negative eigenvalue.
"""

from __future__ import annotations

import numpy as np

from .chunk import ChunkData, _expand, _slabs, build_contractor
from .double_double import dd_add, dd_gradient, dd_gram, dd_sum, two_prod, two_sum
from .layout import Layout
from .qr import PIECE_VALUES, design_rows

__all__ = [
    "two_sum",
    "two_prod",
    "dd_sum",
    "accurate_length",
    "accurate_chunk",
    "accurate_hessian_length",
    "accurate_hessian_chunk",
    "accurate_hessian_unpack",
    "accurate_combine",
    "accurate_unpack",
]


def accurate_length(layout: Layout) -> int:
    """Length of a packed chunk result: the (hi, lo) halves of the ``n_beta`` gradient values."""
    return 2 * layout.n_beta


def _linear_only(layout: Layout) -> None:
    if not layout.family.linear:
        raise ValueError(
            f"the double-double passes are for a family whose gradient is linear in the data "
            f"(the Gaussian), not {layout.family!r}"
        )


def _pieces(layout: Layout, arrays: tuple):
    """The chunk's used design rows a piece at a time: ``(X, y, offset, w)`` per piece."""
    nb = layout.n_beta
    shape = np.shape(arrays[layout.role("y")[0]])
    local = [_expand(a, s, shape) for a, s in zip(arrays, layout.args, strict=True)]
    con = build_contractor(layout, local, shape)
    for (ax, start, stop), slab_arrays in _slabs(layout, arrays, shape):
        part = con if ax is None else con.slab(ax, start, stop)
        d = ChunkData(layout, slab_arrays, contractor=part)
        w = np.broadcast_to(d.w, d.shape).ravel()
        y = np.broadcast_to(d.y, d.shape).ravel()
        off = np.broadcast_to(np.asarray(d.offset, dtype=np.float64), d.shape).ravel()
        used_rows = np.flatnonzero(w != 0)
        step = max(PIECE_VALUES // max(nb, 1), 1)
        for first in range(0, used_rows.size, step):
            rows = used_rows[first : first + step]
            X = design_rows(part, rows).astype(np.float64, copy=False)
            yield X, y[rows], off[rows], w[rows]


def accurate_chunk(layout: Layout, params: np.ndarray, *arrays: np.ndarray) -> np.ndarray:
    """``X' w (y - offset - X b)`` of one chunk in double-double, packed as (hi, lo) halves.

    Gaussian family only (its gradient is linear in the data; see the module docstring).
    Returns shape ``(1,) * ndim + (accurate_length(layout),)``.
    """
    _linear_only(layout)
    nb = layout.n_beta
    beta = np.asarray(params, dtype=np.float64)[:nb]
    shape = np.shape(arrays[layout.role("y")[0]])
    hi = np.zeros(nb)
    lo = np.zeros(nb)
    with np.errstate(all="ignore"):
        for X, y, off, w in _pieces(layout, arrays):
            s_hi, s_lo = dd_gradient(X, beta, y, off, w)
            hi, lo = dd_add(hi, lo, s_hi, s_lo)
        hi, lo = two_sum(hi, lo)
    return np.concatenate([hi, lo]).reshape((1,) * len(shape) + (-1,))


def accurate_hessian_length(layout: Layout) -> int:
    """Length of a packed chunk Hessian: the (hi, lo) halves of ``n_beta^2`` values."""
    return 2 * layout.n_beta**2


def accurate_hessian_chunk(layout: Layout, *arrays: np.ndarray) -> np.ndarray:
    """``X' w X`` of one chunk in double-double (:func:`~daskglm.kernels.double_double.dd_gram`),
    packed as the (hi, lo) halves of the row-major ``n_beta x n_beta`` matrix.

    Gaussian family only: its Hessian, ``-X' w X``, does not depend on the parameters. For
    the inverse-free preconditioner where the float64 Hessian has no correct digits in its
    smallest directions (NIST's Filip). Returns shape ``(1,) * ndim +
    (accurate_hessian_length(layout),)``.
    """
    _linear_only(layout)
    nb = layout.n_beta
    shape = np.shape(arrays[layout.role("y")[0]])
    hi = np.zeros(nb * nb)
    lo = np.zeros(nb * nb)
    with np.errstate(all="ignore"):
        # dd_gram forms rows x nb x nb products: keep that within PIECE_VALUES
        rows = max(PIECE_VALUES // max(nb * nb, 1), 1)
        for X, _, _, w in _pieces(layout, arrays):
            for first in range(0, X.shape[0], rows):
                part = slice(first, first + rows)
                g_hi, g_lo = dd_gram(X[part], w[part])
                hi, lo = dd_add(hi, lo, g_hi.ravel(), g_lo.ravel())
        hi, lo = two_sum(hi, lo)
    return np.concatenate([hi, lo]).reshape((1,) * len(shape) + (-1,))


def accurate_combine(packed: np.ndarray, n: int) -> np.ndarray:
    """Add packed (hi, lo) results (rows of ``packed``, any leading shape) in double-double."""
    flat = np.asarray(packed, dtype=np.float64).reshape(-1, 2 * n)
    hi, lo = dd_sum(flat[:, :n], flat[:, n:])
    return np.concatenate([hi, lo])


def accurate_unpack(vec: np.ndarray, n: int) -> np.ndarray:
    """The gradient of a combined packed vector, rounded to float64 (``hi + lo``)."""
    vec = np.asarray(vec, dtype=np.float64).ravel()
    return vec[:n] + vec[n:]


def accurate_hessian_unpack(vec: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n x n`` Hessian ``-X' w X`` of a combined packed vector as (hi, lo) matrices."""
    vec = np.asarray(vec, dtype=np.float64).ravel()
    m = n * n
    return -vec[:m].reshape(n, n), -vec[m:].reshape(n, n)
