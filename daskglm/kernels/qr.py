"""Tall-skinny QR (TSQR) of the weighted design: the chunk and combine kernels (numpy only).

Why: the Newton step of a GLM is the weighted least-squares problem
``min_s || sqrt(W) (r - X s) ||`` with ``W = -w h`` (the cells' weights times minus the second
derivative of the log-likelihood in eta) and the *working residual* ``r = g / (-h)``; its
normal equations ``X' W X s = X' w g`` are what :func:`~daskglm.solvers.newton.newton_direction`
solves. Forming ``X' W X`` squares the condition number of the weighted design: a design with
``cond(sqrt(W) X D) = 1e8`` after the best column scaling ``D`` (NIST's Filip, a degree-10
polynomial) has a Gram matrix with condition 1e16, about ``1 / eps``, and no digit of its
solution or inverse survives. A QR factorisation of ``sqrt(W) [X | r]`` keeps ``cond`` itself:
Householder QR is backward stable column by column, so the step ``R^{-1} Q' r`` and the inverse
information ``R^{-1} R^{-T}`` are accurate to about ``cond * eps`` (7 digits on Filip).

How, in one pass: each chunk (slab by slab, so the rows stay in cache) stacks its rows under
the R factor so far and re-factorises, ``R <- qr_r([R; rows])``; chunks are combined in a tree
by stacking their R factors and factorising again (``R'R`` is the sum of the chunks' ``A'A``:
the same reduction as the Hessian's sum, only orthogonal). The design of a chunk is formed a
piece at a time (at most :data:`PIECE_VALUES` values), never for the panel. It costs
``2 * cells * P^2`` flops where the Hessian pass needs ``cells`` times the columns of the
full-grid blocks only (the other blocks are contracted on their own, smaller grids), so on a
panel whose covariates mostly span few dims a QR pass costs several Hessian passes; the Newton
solver only switches to it when the equilibrated Hessian is ill-conditioned (see
:class:`~daskglm.solvers.newton.NewtonConfig`).

Kinds of factorisation:

* ``"design"``: ``sqrt(w) X`` (frequency weights only): ``R'R`` is the Gram matrix of the setup
  pass; its singular values decide collinearity where the Gram's eigenvalues cannot
  (:func:`~daskglm.kernels.checks.collinear_groups`).
* ``"newton"``: ``sqrt(W) [X | r]`` at given parameters: ``R`` (first ``P`` columns) and
  ``Q' r`` (last column) give the Newton step; ``R`` alone gives the inverse information.
  Cells with ``W < 0`` (a log-likelihood not concave in eta there) are counted: the Newton
  step then does not come from a weighted least-squares problem and the solver falls back to
  the Hessian.

Gaussian family, extended precision. A backward-stable solve is still limited by a term
``cond^2 * eps * |r| / (|X| |b|)`` when the residuals are large (NIST's Wampler5: y ~ 2e7 with
coefficients of 1), because the gradient ``X' r`` computed in float64 carries rounding of
``eps * |X|' |r|``. For the Gaussian (:attr:`~daskglm.kernels.families.Family.linear`) the residual is
linear in the data, so the ``"newton"`` pass also accumulates ``X' w (y - offset - X b)`` in
double-double arithmetic (:func:`daskglm.kernels.double_double.dd_gradient`, error-free
transformations on float64: the same result on every platform, unlike ``numpy.longdouble``,
which is float64 on Windows and Apple silicon) and returns it as (hi, lo) halves; the solver
then refines with the corrected semi-normal equations ``R'R s = X'r`` (``s`` from two triangular
solves), each Newton iteration being one refinement step. That takes Wampler5 from 5.5 correct
digits (float64) to 15 (``numpy.longdouble`` on x86-64 gave 9.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import get_lapack_funcs

from .chunk import ChunkData, _expand, _slabs, build_contractor
from .contract import BlockContractor
from .double_double import dd_add, dd_gradient, dd_sum, two_sum
from .layout import Layout

__all__ = [
    "QR_KINDS",
    "TSQR",
    "qr_width",
    "qr_length",
    "qr_grad_size",
    "qr_chunk",
    "qr_combine",
    "qr_unpack",
    "design_rows",
]


@dataclass
class TSQR:
    """A combined TSQR pass.

    Attributes
    ----------
    r : ndarray
        The ``m x m`` R factor (for ``"newton"``: ``[[R, Q'r], [0, |residual|]]``).
    n_negative : int
        Used cells with ``W < 0`` (left out; the factor is then not the Hessian's).
    grad : ndarray or None
        ``X' w (y - eta)`` accumulated in double-double (Gaussian ``"newton"`` passes), rounded
        to float64.
    """

    r: np.ndarray
    n_negative: int
    grad: np.ndarray | None


#: the factorisations :func:`qr_chunk` computes
QR_KINDS = ("design", "newton")


def qr_width(layout: Layout, kind: str) -> int:
    """Columns of the factorised matrix: the coefficients, plus the working residual for
    ``"newton"``."""
    if kind not in QR_KINDS:
        raise ValueError(f"unknown QR kind {kind!r}; use one of {QR_KINDS}")
    return layout.n_beta + (kind == "newton")


def qr_length(m: int, n_grad: int = 0) -> int:
    """Length of the packed vector: the ``m x m`` factor, the count of cells with ``W < 0``
    and the (hi, lo) halves of an extended-precision gradient of ``n_grad`` values."""
    return m * m + 1 + 2 * n_grad


def qr_grad_size(layout: Layout, kind: str) -> int:
    """Values of the double-double gradient a pass returns (``"newton"`` passes of a
    :attr:`~daskglm.kernels.families.Family.linear` family, the Gaussian, only)."""
    return layout.n_beta if kind == "newton" and layout.family.linear else 0


def _join(packed: np.ndarray, n: int) -> np.ndarray:
    """Add rows of (hi, lo) halves in double-double; the (hi, lo) halves of the sum,
    concatenated."""
    packed = np.asarray(packed, dtype=np.float64).reshape(-1, 2 * n)
    hi, lo = dd_sum(packed[:, :n], packed[:, n:])
    return np.concatenate([hi, lo])


def _r(A: np.ndarray, m: int) -> np.ndarray:
    """The ``m x m`` R factor of ``A`` (``n x m``), zero-padded when ``n < m``.

    LAPACK's ``geqrf`` with a blocked workspace: on tall-skinny blocks (65536 x 11) it is
    about 30 times faster than ``numpy.linalg.qr``, close to the cost of the Gram product.
    """
    n = A.shape[0]
    if n == 0:
        return np.zeros((m, m))
    geqrf = get_lapack_funcs("geqrf", (A,))
    qr, _, _, info = geqrf(np.asfortranarray(A, dtype=np.float64), lwork=max(64 * m, 1), overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"geqrf failed (info={info})")
    R = np.triu(qr[: min(n, m)])
    if R.shape[0] < m:
        R = np.vstack([R, np.zeros((m - R.shape[0], m))])
    return R


#: most values of the weighted design formed and factorised at once (rows x columns, 2 MB: the
#: rows stay in cache and each LAPACK call is small enough not to be split over threads)
PIECE_VALUES = 2**18


def design_rows(con: BlockContractor, rows: np.ndarray) -> np.ndarray:
    """The design of a slab at the flat cell indices ``rows``: a ``len(rows) x P`` array, each
    block's columns gathered from its own (smaller) grid at those cells."""
    coords = np.unravel_index(rows, con.shape)
    zeros = np.zeros(rows.size, dtype=np.intp)
    cols = []
    for k in range(len(con.sizes)):
        x = con.X[k]
        # a length-1 axis (the block lacks the dim, or the chunk is one cell long there) is
        # indexed by zeros, not 0: the gather is then always (columns, rows)
        idx = tuple(coords[d] if x.shape[1 + d] > 1 else zeros for d in range(len(con.shape)))
        cols.append(x[(slice(None),) + idx])
    return np.vstack(cols).T if cols else np.zeros((rows.size, 0))


def qr_chunk(layout: Layout, params: np.ndarray, kind: str, *arrays: np.ndarray) -> np.ndarray:
    """The R factor of one chunk's weighted rows (see the module docstring), packed.

    Returns shape ``(1,) * ndim + (qr_length(m),)``: ``R`` row-major, then the number of used
    cells where ``W < 0`` (``"newton"`` only; those rows are left out).
    """
    fam = layout.family
    nb = layout.n_beta
    m = qr_width(layout, kind)
    n_grad = qr_grad_size(layout, kind)
    beta, theta = params[:nb], params[nb:]
    beta64 = np.asarray(beta, dtype=np.float64)
    shape = np.shape(arrays[layout.role("y")[0]])
    R = np.zeros((0, m))
    n_negative = 0
    grad_hi, grad_lo = np.zeros(n_grad), np.zeros(n_grad)
    with np.errstate(all="ignore"):
        local = [_expand(a, s, shape) for a, s in zip(arrays, layout.args, strict=True)]
        con = build_contractor(layout, local, shape)
        grids = con.linear_grids(beta) if kind == "newton" else None
        for (ax, start, stop), slab_arrays in _slabs(layout, arrays, shape):
            part = con if ax is None else con.slab(ax, start, stop)
            d = ChunkData(layout, slab_arrays, contractor=part)
            if kind == "design":
                W = np.broadcast_to(d.w, d.shape).ravel()
                resid = None
            else:
                eta = d.eta(beta, grids)
                der = fam.derivatives(d.y, eta, d.aux, theta)
                W = np.broadcast_to(-d.w * der.h, d.shape).ravel()
                n_negative += int(np.count_nonzero((W < 0) & np.broadcast_to(d.used, d.shape).ravel()))
                resid = np.broadcast_to(d.w * der.g, d.shape).ravel()
            used_rows = np.flatnonzero(W > 0)
            step = max(PIECE_VALUES // max(m, 1), m)
            for lo in range(0, used_rows.size, step):
                rows = used_rows[lo : lo + step]
                sw = np.sqrt(W[rows])
                X = design_rows(part, rows)
                if n_grad:  # Gaussian: X' w (y - offset - X b) in double-double
                    off = np.broadcast_to(np.asarray(d.offset, dtype=np.float64), d.shape).ravel()[rows]
                    y = np.broadcast_to(np.asarray(d.y, dtype=np.float64), d.shape).ravel()[rows]
                    X64 = np.asarray(X, dtype=np.float64)
                    s_hi, s_lo = dd_gradient(X64, beta64, y, off, np.asarray(W[rows], dtype=np.float64))
                    grad_hi, grad_lo = dd_add(grad_hi, grad_lo, s_hi, s_lo)
                A = X * sw[:, None]
                if resid is not None:
                    A = np.column_stack([A, resid[rows] / sw])
                R = _r(np.vstack([R, A]), m)
        if R.shape[0] < m:
            R = _r(R, m)
    grad = np.concatenate(two_sum(grad_hi, grad_lo)) if n_grad else []
    vec = np.concatenate([R.ravel(), [float(n_negative)], grad])
    return vec.reshape((1,) * len(shape) + (-1,))


def qr_combine(packed: np.ndarray, m: int, n_grad: int = 0) -> np.ndarray:
    """Combine packed R factors (rows of ``packed``, any leading shape) into one: stack them
    and factorise again. Counts are summed, gradients summed in double-double."""
    flat = np.asarray(packed, dtype=np.float64).reshape(-1, qr_length(m, n_grad))
    R = _r(flat[:, : m * m].reshape(-1, m), m)
    grad = _join(flat[:, m * m + 1 :], n_grad) if n_grad else []
    return np.concatenate([R.ravel(), [flat[:, m * m].sum()], grad])


def qr_unpack(vec: np.ndarray, m: int, n_grad: int = 0) -> TSQR:
    """The :class:`TSQR` of a combined packed vector."""
    vec = np.asarray(vec, dtype=np.float64).ravel()
    grad = None
    if n_grad:
        halves = _join(vec[m * m + 1 :], n_grad)
        grad = halves[:n_grad] + halves[n_grad:]
    return TSQR(vec[: m * m].reshape(m, m), int(vec[m * m]), grad)
