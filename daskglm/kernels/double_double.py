"""Double-double arithmetic on float64 arrays: error-free transformations (numpy only).

Knuth's TwoSum, Dekker's TwoProduct with Veltkamp's split, a pairwise cascade of TwoSums, and
on top of them the Gaussian gradient ``X' w (y - offset - X b)`` of a block of design rows as
an unevaluated sum ``hi + lo`` of float64s. Vectorised over the cells, so the result has the
accuracy of a float64 computation in twice the precision whatever the platform's
``numpy.longdouble`` is (80-bit on x86-64 Linux, plain float64 on Windows and Apple silicon).

Also the Gaussian Hessian ``X' w X`` of a block (:func:`dd_gram`) and products of small
double-double matrices (:func:`dd_matmul`, :func:`dd_scale`), from which the inverse-free
preconditioner runs its Newton-Schulz iterations where float64 has no correct digits left
(NIST's Filip: equilibrated condition number 1.5e19).

Used by the double-double passes (:mod:`daskglm.kernels.accurate`), by the Gaussian ``"newton"`` QR
pass (:mod:`daskglm.kernels.qr`) and by :mod:`daskglm.solvers.preconditioning`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "two_sum",
    "two_prod",
    "dd_sum",
    "dd_residual",
    "dd_gradient",
    "dd_gram",
    "dd_add",
    "dd_matmul",
    "dd_scale",
]

#: Veltkamp's splitter for float64: 2^27 + 1
_SPLITTER = 134217729.0


def two_sum(a, b) -> tuple[np.ndarray, np.ndarray]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``s + e = a + b`` exactly (Knuth; any magnitudes)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a) -> tuple[np.ndarray, np.ndarray]:
    """Veltkamp's split: ``a = hi + lo`` exactly, each with at most 26 significant bits."""
    t = _SPLITTER * a
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a, b) -> tuple[np.ndarray, np.ndarray]:
    """``(p, e)`` with ``p = fl(a b)`` and ``p + e = a b`` exactly (Dekker), barring
    over/underflow (values beyond about 1e290 or below 1e-290)."""
    return _two_prod_split(a, *_split(a), b, *_split(b))


def _two_prod_split(a, ah, al, b, bh, bl) -> tuple[np.ndarray, np.ndarray]:
    """:func:`two_prod` with both factors already split (``a = ah + al`` by :func:`_split`):
    an array used in several products is split once."""
    p = a * b
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def dd_sum(s: np.ndarray, c: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``sum(s) + sum(c)`` over axis 0 as a (hi, lo) pair.

    ``s`` is summed by a pairwise cascade of TwoSums whose errors are carried in float64 next
    to ``c`` (which must be small beside ``s``, e.g. product errors). The error is about
    ``eps * |hi| + n eps^2 sum|s|`` (pairwise: ``log2(n) eps^2``) instead of float64's
    ``log2(n) eps sum|s|``.
    """
    s = np.asarray(s, dtype=np.float64)
    c = np.zeros_like(s) if c is None else np.asarray(c, dtype=np.float64)
    tail_s = np.zeros(s.shape[1:])
    tail_c = np.zeros(s.shape[1:])
    while s.shape[0] > 1:
        if s.shape[0] % 2:  # fold the odd row into the tail
            tail_s, e = two_sum(tail_s, s[-1])
            tail_c = tail_c + c[-1] + e
            s, c = s[:-1], c[:-1]
        s, e = two_sum(s[0::2], s[1::2])
        c = c[0::2] + c[1::2] + e
    if s.shape[0]:
        tail_s, e = two_sum(tail_s, s[0])
        tail_c = tail_c + c[0] + e
    return two_sum(tail_s, tail_c)


def dd_add(
    hi: np.ndarray, lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(hi + lo) + (b_hi + b_lo)`` as an unnormalised (hi, lo) pair (an accumulator: call
    :func:`two_sum` on the pair once at the end)."""
    hi, e = two_sum(hi, b_hi)
    return hi, lo + (e + b_lo)


def dd_residual(
    X: np.ndarray, beta: np.ndarray, y: np.ndarray, off: np.ndarray, split: tuple | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``y - off - X beta`` at each row as a (hi, lo) pair (TwoProduct and TwoSum per term).

    Parameters
    ----------
    X : ndarray
        ``rows x P`` design rows (float64).
    beta : ndarray
        ``P`` coefficients.
    y, off : ndarray
        Response and offset per row.
    split : (ndarray, ndarray), optional
        ``X``'s halves by :func:`_split`, when the caller has them.
    """
    Xh, Xl = _split(X) if split is None else split
    bh, bl = _split(np.asarray(beta, dtype=np.float64))
    s = np.zeros(X.shape[0])
    c = np.zeros(X.shape[0])
    for j in range(X.shape[1]):
        p, pe = _two_prod_split(X[:, j], Xh[:, j], Xl[:, j], beta[j], bh[j], bl[j])
        s, se = two_sum(s, p)
        c = c + (pe + se)
    s, se = two_sum(s, off)
    c = c + se
    hi, e = two_sum(y, -s)
    return two_sum(hi, e - c)


def dd_gradient(
    X: np.ndarray, beta: np.ndarray, y: np.ndarray, off: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``X' w (y - off - X beta)`` over the rows of ``X`` as (hi, lo) float64 vectors.

    The residual by :func:`dd_residual`, ``w r`` by TwoProduct, each product ``x_ij v_i``
    split exactly into ``p + e`` and the ``p`` summed by :func:`dd_sum`. The error is about
    ``eps^2 |X|' |w r|`` (``eps = 2^-53``) plus the final rounding.

    Parameters
    ----------
    X : ndarray
        ``rows x P`` design rows (float64).
    beta : ndarray
        ``P`` coefficients.
    y, off, w : ndarray
        Response, offset and weight per row.

    Returns
    -------
    (ndarray, ndarray)
        The ``P`` sums as unnormalised (hi, lo) halves.
    """
    Xh, Xl = _split(X)
    r_hi, r_lo = dd_residual(X, beta, y, off, (Xh, Xl))
    v_hi, v_e = two_prod(w, r_hi)
    v_lo = v_e + w * r_lo
    vh, vl = _split(v_hi)
    p, pe = _two_prod_split(X, Xh, Xl, v_hi[:, None], vh[:, None], vl[:, None])
    # the products' errors and the low part of w r are eps-small beside p: summed in float64
    # their error is eps^2 of the terms
    s_hi, s_lo = dd_sum(p, pe)
    return s_hi, s_lo + X.T @ v_lo


def dd_gram(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X' w X`` over the rows of ``X`` as (hi, lo) ``P x P`` float64 matrices.

    ``w x_i`` by TwoProduct, each product ``(w x_i) x_j`` split exactly into ``p + e`` (the
    low part of ``w x_i`` times ``x_j`` joins ``e``) and the ``p`` summed by :func:`dd_sum`:
    an error of about ``eps^2 |X|' w |X|`` plus the final rounding. Costs ``rows P^2`` products.
    """
    X = np.asarray(X, dtype=np.float64)
    v_hi, v_lo = two_prod(np.asarray(w, dtype=np.float64)[:, None], X)
    p, pe = two_prod(v_hi[:, :, None], X[:, None, :])
    return dd_sum(p, pe + v_lo[:, :, None] * X[:, None, :])


def dd_matmul(
    a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray, b_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The product of double-double matrices ``(a_hi + a_lo) (b_hi + b_lo)``, normalised.

    ``A`` is ``P x K``, ``B`` is ``K x Q``; every ``a_ik b_kj`` by TwoProduct (the cross terms
    with the low parts in float64: they are ``eps`` beside it) and the sums over ``k`` by
    :func:`dd_sum`. Error about ``eps^2 |A| |B|``. Additions and multiplications only.
    """
    p, e = two_prod(a_hi[:, :, None], b_hi[None, :, :])
    e = e + (a_hi[:, :, None] * b_lo[None, :, :] + a_lo[:, :, None] * b_hi[None, :, :])
    return dd_sum(np.moveaxis(p, 1, 0), np.moveaxis(e, 1, 0))


def dd_scale(hi: np.ndarray, lo: np.ndarray, s) -> tuple[np.ndarray, np.ndarray]:
    """``(hi + lo) s`` for a float64 ``s`` (scalar or broadcasting array), normalised."""
    p, e = two_prod(hi, s)
    return two_sum(p, e + lo * s)
