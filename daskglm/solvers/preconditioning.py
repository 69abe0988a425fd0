"""Inverse-free preconditioning for the gradient-only solvers and the Newton-Schulz solver.

Everything here is built from a Hessian by matrix products, additions and elementwise
scalings: no matrix solve, inverse or factorisation, so it can run where only additions and
multiplications are available (homomorphic encryption, secure aggregation).

Two layers:

* :class:`Preconditioner` (diagonal equilibration). From the Hessian ``H0`` at the starting
  values: with an intercept, every coefficient's covariate is centred on its curvature-weighted
  mean ``m_j = H0[0, j] / H0[0, 0]``, i.e. ``beta = T theta`` with ``beta_0 = theta_0 - sum_j m_j
  theta_j`` (this removes the strong intercept-covariate coupling of raw-scale covariates); then
  ``D = -diag(T' H0 T)`` (floored to stay positive) scales each centred coordinate to unit
  curvature.
* :class:`MatrixPreconditioner` (full matrix). The equilibrated curvature ``C = D^-1/2 T' (-H0)
  T D^-1/2`` (unit diagonal) is turned into ``C^-1/2`` by the coupled Newton-Schulz iteration
  (:func:`newton_schulz_inverse_sqrt`), so that in the coordinates ``z`` with ``beta = R z``,
  ``R = T D^-1/2 C^-1/2``, the curvature at the start is the identity: gradient steps there are
  Newton steps. Where ``-H0`` is not positive definite the iteration diverges, which is how this
  is detected; ``C + mu I`` is used instead, with the smallest ``mu`` in ``1e-8, 1e-7, ...`` for
  which it converges (a Levenberg-Marquardt damping).

:func:`newton_schulz_inverse` gives ``C^-1`` by ``X_{k+1} = X_k (2I - C X_k)`` for the
Newton-Schulz solver (:mod:`.newton_schulz`).

Where the float64 Hessian has no correct digits in its smallest directions (NIST's Filip, x to
x^10: the centred and scaled curvature has condition number 1.5e19, and its float64 version a
negative eigenvalue, -2e-15, where the true one is 6.5e-19), a Gaussian objective offers the
Hessian summed in double-double (``accurate_hessian``, one pass); it is equilibrated and
inverted by the same Newton-Schulz iterations run in double-double arithmetic
(:func:`dd_newton_schulz_inverse`, :func:`dd_newton_schulz_inverse_sqrt`: products and
additions of double-double numbers, scalings by powers of two), and the result rounded to
float64 (:func:`accurate_inverse`). :class:`StallMonitor` tells the gradient solvers
when to rebuild the preconditioner from a fresh Hessian (one extra pass) because the curvature
has moved away from the one it was built from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels.double_double import dd_matmul, dd_scale, two_sum

__all__ = [
    "Preconditioner",
    "MatrixPreconditioner",
    "GradientStop",
    "StallMonitor",
    "NSResult",
    "newton_schulz_inverse",
    "newton_schulz_inverse_sqrt",
    "damped_inverse",
    "dd_newton_schulz_inverse",
    "dd_newton_schulz_inverse_sqrt",
    "accurate_inverse",
    "needs_accurate_hessian",
    "ACCURATE_RTOL",
    "accurate_evaluator",
    "rounding_decrement",
]

#: residual (Frobenius norm of ``I - C X``) below which a Newton-Schulz iteration has converged
NS_TOL = 1e-14
#: most Newton-Schulz iterations; from ``alpha I`` about ``log2(cond(C)) + 6`` are needed
NS_MAX_ITER = 100
#: dampings ``mu`` tried, in order, when ``C`` is not positive definite
DAMPINGS = tuple(10.0**k for k in range(-8, 7))
#: a float64 Newton-Schulz residual floor above this (about ``cond(C) eps``: a condition number
#: of 1e10), or a damping needed for a Gaussian Hessian that is positive semi-definite by
#: construction, means the float64 Hessian has too few correct digits in its smallest
#: directions: the preconditioner is rebuilt from the double-double Hessian
DD_TRIGGER = 1e-6
#: tolerance and most iterations of the double-double Newton-Schulz iterations (from a scaled
#: identity about ``log2(cond(C)) + 6`` updates: on NIST's Filip, condition number 1.5e19, 71 for
#: ``C^-1`` and 62 for ``C^-1/2``)
DD_NS_TOL = 1e-28
DD_NS_MAX_ITER = 200


def _fro(M: np.ndarray) -> float:
    return float(np.sqrt(np.sum(M * M)))


def _sym(M: np.ndarray) -> np.ndarray:
    return 0.5 * (M + M.T)


@dataclass(frozen=True)
class NSResult:
    """A Newton-Schulz iteration's outcome.

    Attributes
    ----------
    X : ndarray, shape (P, P)
        The approximation (``C^-1`` or ``C^-1/2``).
    residual : float
        Frobenius norm of ``I - C X`` (inverse) or ``I - Z Y`` (inverse square root).
    iterations : int
        Newton-Schulz updates made.
    products : int
        P x P matrix products made.
    converged : bool
        Whether the residual fell below the tolerance or stopped falling at the level of
        rounding error (as it does for an ill-conditioned ``C``).
    warm : bool
        Whether it started from the given ``X0`` (False: from ``alpha I``).
    """

    X: np.ndarray
    residual: float
    iterations: int
    products: int
    converged: bool
    warm: bool = False


def _floor_reached(res: float, prev: float) -> bool:
    # below 1/2 the residual squares every iteration; when it stops doing so it has reached
    # rounding error (about cond(C) * eps): further iterations cannot improve it
    return prev < 0.5 and res > 0.5 * prev


def newton_schulz_inverse(
    C: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    tol: float = NS_TOL,
    max_iter: int = NS_MAX_ITER,
    warm_only: bool = False,
) -> NSResult:
    """``C^-1`` for a symmetric positive definite ``C`` by ``X_{k+1} = X_k (2I - C X_k)``.

    The residual ``R_k = I - C X_k`` squares at every step (``R_{k+1} = R_k^2``), so the
    iteration converges, quadratically, whenever the spectral radius of ``R_0`` is below 1.
    Without ``X0`` it starts from ``alpha I`` with ``alpha = 1 / ||C||_inf``: the eigenvalues of
    ``R_0`` are then ``1 - lambda / ||C||_inf`` in ``[0, 1)`` if ``C`` is positive definite, and
    one is above 1, so the iteration diverges, if it is not. A warm start ``X0`` (the inverse of
    a nearby matrix) is used when ``||I - C X0||_F < 1``, which guarantees convergence.

    Each iteration is two P x P products (``C X`` and ``X R``). Returns an :class:`NSResult`
    whose ``converged`` is False when the iteration diverged (``C`` not positive definite) or
    did not settle within ``max_iter``, or, with ``warm_only``, when ``X0`` is not close
    enough to start from (the caller then re-equilibrates and starts cold).
    """
    C = np.asarray(C, dtype=np.float64)
    P = C.shape[0]
    eye = np.eye(P)
    products = 0
    warm = X0 is not None
    if X0 is not None:
        R = eye - C @ X0
        products += 1
        res = _fro(R)
        if not (np.isfinite(res) and res < 1.0):
            if warm_only:
                return NSResult(X0, res, 0, products, False, False)
            X0, warm = None, False
    if X0 is None:
        norm_inf = float(np.max(np.sum(np.abs(C), axis=1))) if P else 1.0
        if not (np.isfinite(norm_inf) and norm_inf > 0):
            return NSResult(np.zeros_like(C), np.inf, 0, products, False)
        X = eye / norm_inf
        R = eye - C / norm_inf
        res = _fro(R)
    else:
        X = np.asarray(X0, dtype=np.float64)
    prev = np.inf
    for it in range(max_iter + 1):
        if res <= tol or _floor_reached(res, prev):
            return NSResult(_sym(X), min(res, prev), it, products, True, warm)
        if not np.isfinite(res) or res > 1e8 or it == max_iter:
            return NSResult(_sym(X), res, it, products, False, warm)
        X = X + X @ R
        R = eye - C @ X
        products += 2
        prev, res = res, _fro(R)
    raise AssertionError("unreachable")  # pragma: no cover


def newton_schulz_inverse_sqrt(
    C: np.ndarray, *, tol: float = NS_TOL, max_iter: int = NS_MAX_ITER
) -> NSResult:
    """``C^-1/2`` for a symmetric positive definite ``C`` by the coupled Newton-Schulz iteration.

    With ``c = ||C||_inf`` (at least the largest eigenvalue), ``Y_0 = C / c``, ``Z_0 = I``::

        T_k = (3I - Z_k Y_k) / 2,   Y_{k+1} = Y_k T_k,   Z_{k+1} = T_k Z_k

    ``Y_k -> (C/c)^1/2`` and ``Z_k -> (C/c)^-1/2`` (Higham, *Functions of Matrices*, 2008, sec.
    6.7; the coupled form is numerically stable). For an eigenvalue ``p = lambda / c`` in
    ``(0, 1]`` the product ``Z Y`` goes ``p -> p (3 - p)^2 / 4``: up by 9/4 per iteration while
    small, then quadratically to 1; a negative eigenvalue diverges. Each iteration is three
    P x P products. Returns ``Z / sqrt(c)`` in an :class:`NSResult` (residual ``||I - Z Y||_F``).
    """
    C = np.asarray(C, dtype=np.float64)
    P = C.shape[0]
    eye = np.eye(P)
    c = float(np.max(np.sum(np.abs(C), axis=1))) if P else 1.0
    if not (np.isfinite(c) and c > 0):
        return NSResult(np.zeros_like(C), np.inf, 0, 0, False)
    Y, Z = C / c, eye.copy()
    ZY = Y
    res, prev, products = _fro(eye - ZY), np.inf, 0
    for it in range(max_iter + 1):
        if res <= tol or _floor_reached(res, prev):
            return NSResult(Z / np.sqrt(c), min(res, prev), it, products, True)
        if not np.isfinite(res) or res > 1e8 or it == max_iter:
            return NSResult(Z / np.sqrt(c), res, it, products, False)
        T = 0.5 * (3.0 * eye - ZY)
        Y, Z = _sym(Y @ T), _sym(T @ Z)
        ZY = Z @ Y
        products += 3
        prev, res = res, _fro(eye - ZY)
    raise AssertionError("unreachable")  # pragma: no cover


def damped_inverse(
    C: np.ndarray,
    X0: np.ndarray | None = None,
    *,
    sqrt: bool = False,
    tol: float = NS_TOL,
    max_iter: int = NS_MAX_ITER,
):
    """``(C + mu I)^-1`` (or ``^-1/2``) by Newton-Schulz with the smallest damping that works.

    ``mu = 0`` first (with the warm start ``X0``, inverse only); then ``mu`` in
    :data:`DAMPINGS`, relative to ``C``'s unit diagonal, until the iteration converges (it
    diverges exactly when ``C + mu I`` is not positive definite).

    Returns ``(NSResult, mu, total_products)``.
    """
    total = 0
    P = C.shape[0]
    for mu in (0.0, *DAMPINGS):
        A = C if mu == 0.0 else C + mu * np.eye(P)
        if sqrt:
            r = newton_schulz_inverse_sqrt(A, tol=tol, max_iter=max_iter)
        else:
            r = newton_schulz_inverse(A, X0 if mu == 0.0 else None, tol=tol, max_iter=max_iter)
        total += r.products
        if r.converged:
            return r, mu, total
    raise FloatingPointError(
        "the Hessian could not be made positive definite by damping up to "
        f"{DAMPINGS[-1]:g} x its diagonal: it is not finite or the model is not identified"
    )


def _pow2(x: float) -> float:
    """The power of two at or above ``x > 0`` (scaling by it is exact)."""
    return float(2.0 ** np.ceil(np.log2(x)))


def _dd_fro(hi: np.ndarray, lo: np.ndarray) -> float:
    return _fro(hi + lo)


def _dd_eye_minus(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``I - (hi + lo)``, normalised."""
    h, e = two_sum(np.eye(hi.shape[0]), -hi)
    return two_sum(h, e - lo)


def _dd_add(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    h, e = two_sum(a[0], b[0])
    return two_sum(h, e + (a[1] + b[1]))


def _dd_sym(a: tuple) -> tuple[np.ndarray, np.ndarray]:
    return dd_scale(*_dd_add(a, (a[0].T, a[1].T)), 0.5)


def dd_newton_schulz_inverse(
    c_hi: np.ndarray, c_lo: np.ndarray, *, tol: float = DD_NS_TOL, max_iter: int = DD_NS_MAX_ITER
) -> NSResult:
    """:func:`newton_schulz_inverse` (cold start) in double-double arithmetic.

    ``C = c_hi + c_lo``; ``X_0 = alpha I`` with ``alpha`` the power of two at or below
    ``1 / ||C||_inf`` (exact), then ``X_{k+1} = X_k + X_k (I - C X_k)`` with every product by
    :func:`~daskglm.kernels.double_double.dd_matmul`. Reaches a residual of about ``cond(C) eps^2``
    instead of ``cond(C) eps``. Returns ``X`` rounded to float64 (``hi + lo``).
    """
    P = c_hi.shape[0]
    norm_inf = float(np.max(np.sum(np.abs(c_hi), axis=1))) if P else 1.0
    if not (np.isfinite(norm_inf) and norm_inf > 0):
        return NSResult(np.zeros_like(c_hi), np.inf, 0, 0, False)
    alpha = 1.0 / _pow2(norm_inf)
    X = (alpha * np.eye(P), np.zeros((P, P)))
    R = _dd_eye_minus(*dd_scale(c_hi, c_lo, alpha))
    res, prev, products = _dd_fro(*R), np.inf, 0
    for it in range(max_iter + 1):
        if res <= tol or _floor_reached(res, prev):
            return NSResult(_sym(X[0] + X[1]), min(res, prev), it, products, True)
        if not np.isfinite(res) or res > 1e8 or it == max_iter:
            return NSResult(_sym(X[0] + X[1]), res, it, products, False)
        X = _dd_add(X, dd_matmul(*X, *R))
        R = _dd_eye_minus(*dd_matmul(c_hi, c_lo, *X))
        products += 2
        prev, res = res, _dd_fro(*R)
    raise AssertionError("unreachable")  # pragma: no cover


def dd_newton_schulz_inverse_sqrt(
    c_hi: np.ndarray, c_lo: np.ndarray, *, tol: float = DD_NS_TOL, max_iter: int = DD_NS_MAX_ITER
) -> NSResult:
    """:func:`newton_schulz_inverse_sqrt` in double-double arithmetic.

    ``c`` is the power of four at or above ``||C||_inf``, so that ``C / c`` and ``Z /
    sqrt(c)`` are exact scalings. Returns ``C^-1/2`` rounded to float64.
    """
    P = c_hi.shape[0]
    norm_inf = float(np.max(np.sum(np.abs(c_hi), axis=1))) if P else 1.0
    if not (np.isfinite(norm_inf) and norm_inf > 0):
        return NSResult(np.zeros_like(c_hi), np.inf, 0, 0, False)
    root = float(2.0 ** np.ceil(0.5 * np.log2(norm_inf)))  # sqrt(c), a power of two
    c = root * root
    Y = dd_scale(c_hi, c_lo, 1.0 / c)
    Z = (np.eye(P), np.zeros((P, P)))
    ZY = Y
    res, prev, products = _dd_fro(*_dd_eye_minus(*ZY)), np.inf, 0
    for it in range(max_iter + 1):
        if res <= tol or _floor_reached(res, prev):
            return NSResult(_sym(Z[0] + Z[1]) / root, min(res, prev), it, products, True)
        if not np.isfinite(res) or res > 1e8 or it == max_iter:
            return NSResult(_sym(Z[0] + Z[1]) / root, res, it, products, False)
        T = dd_scale(*_dd_add(dd_scale(np.eye(P), np.zeros((P, P)), 3.0), dd_scale(*ZY, -1.0)), 0.5)
        Y, Z = dd_matmul(*Y, *T), dd_matmul(*T, *Z)
        ZY = dd_matmul(*Z, *Y)
        products += 3
        prev, res = res, _dd_fro(*_dd_eye_minus(*ZY))
    raise AssertionError("unreachable")  # pragma: no cover


def needs_accurate_hessian(r: NSResult, mu: float) -> bool:
    """Whether a float64 Newton-Schulz outcome calls for the double-double Hessian: it needed
    a damping, or its residual floor (about ``cond(C) eps``) is above :data:`DD_TRIGGER`."""
    return mu > 0 or not r.converged or not (r.residual <= DD_TRIGGER)


def accurate_inverse(
    hess_dd: tuple[np.ndarray, np.ndarray], intercept: int | None, n_beta: int, *, sqrt: bool
) -> tuple[Preconditioner, NSResult] | None:
    """The equilibration and ``C^-1`` (or ``C^-1/2``) from a double-double Hessian.

    The centring ``m`` comes from the rounded Hessian as in :meth:`Preconditioner.from_hessian`
    (any float64 ``m`` defines an exact change of coordinates); ``T' (-H) T`` is formed in
    double-double (``T`` is float64, so its products are exact up to ``eps^2``), ``D`` is its
    diagonal, and ``C = D^-1/2 T' (-H) T D^-1/2`` is scaled in double-double with the same
    float64 factors ``1 / sqrt(D)`` that :meth:`Preconditioner.from_equilibrated` applies. The
    Newton-Schulz iteration then runs in double-double. ``None`` if it does not converge.
    """
    hi, lo = (np.asarray(a, dtype=np.float64) for a in hess_dd)
    P = hi.shape[0]
    base = Preconditioner.from_hessian(hi + lo, intercept, n_beta)
    T = np.eye(P)
    if base.intercept is not None:
        T[base.intercept, :] -= base.m
        T[base.intercept, base.intercept] = 1.0
    A = dd_matmul(*dd_matmul(T.T, np.zeros((P, P)), -hi, -lo), T, np.zeros((P, P)))
    diag = np.diag(A[0] + A[1]).copy()
    if not np.all(np.isfinite(diag) & (diag > 0)):
        return None
    pre = Preconditioner(base.m, base.intercept, diag)
    s = 1.0 / np.sqrt(diag)
    # one factor at a time: the float64 product s_i s_j would be rounded
    C = _dd_sym(dd_scale(*dd_scale(*A, s[:, None]), s[None, :]))
    r = dd_newton_schulz_inverse_sqrt(*C) if sqrt else dd_newton_schulz_inverse(*C)
    return (pre, r) if r.converged else None


@dataclass(frozen=True)
class Preconditioner:
    """Centring vector ``m`` (zero off the covariates), intercept index and curvature ``D``.

    Attributes
    ----------
    m : ndarray, shape (P,)
        Centring of each coefficient against the intercept (0 for the intercept, for extra
        parameters such as NB2's log-alpha, and everywhere when there is no intercept).
    intercept : int or None
        Position of the intercept in the parameter vector.
    D : ndarray, shape (P,)
        Positive curvature of each centred coordinate at the start.
    """

    m: np.ndarray
    intercept: int | None
    D: np.ndarray

    @classmethod
    def from_hessian(cls, hess: np.ndarray, intercept: int | None, n_beta: int) -> Preconditioner:
        """Build from the Hessian of the log-likelihood at the starting values."""
        H = np.asarray(hess, dtype=np.float64)
        P = H.shape[0]
        m = np.zeros(P)
        diag = -np.diag(H).copy()
        if intercept is not None and -H[intercept, intercept] > 0:
            k = intercept
            m[:n_beta] = H[k, :n_beta] / H[k, k]
            m[k] = 0.0
            # diag(T' H T)_j = H_jj - 2 m_j H_0j + m_j^2 H_00
            diag = -(np.diag(H) - 2.0 * m * H[k] + m * m * H[k, k])
        scale = np.max(np.abs(diag)) if P else 1.0
        floor = max(1e-10 * scale, 1e-300)
        D = np.where(np.isfinite(diag) & (diag > floor), diag, np.maximum(np.abs(diag), floor))
        return cls(m, intercept, D)

    def to_theta(self, grad: np.ndarray) -> np.ndarray:
        """Gradient in centred coordinates: ``T' g``."""
        g = np.array(grad, dtype=np.float64)
        if self.intercept is not None:
            g = g - self.m * g[self.intercept]
        return g

    def to_beta(self, step_theta: np.ndarray) -> np.ndarray:
        """A step in centred coordinates mapped back to the parameters: ``T s``."""
        s = np.array(step_theta, dtype=np.float64)
        if self.intercept is not None:
            s[self.intercept] -= self.m @ step_theta
        return s

    def direction(self, grad: np.ndarray) -> np.ndarray:
        """The preconditioned ascent direction ``T D^-1 T' g`` in parameter space."""
        return self.to_beta(self.to_theta(grad) / self.D)

    def decrement(self, grad: np.ndarray) -> float:
        """``g_theta' D^-1 g_theta``: the diagonal estimate of the Newton decrement."""
        g = self.to_theta(grad)
        return float(g @ (g / self.D))

    def equilibrate(self, hess: np.ndarray) -> np.ndarray:
        """``C = D^-1/2 T' (-H) T D^-1/2``: the curvature in centred, scaled coordinates.

        ``T' A`` is ``A - m A[k]'`` (an outer product), and ``T' A T = T' (T' A)'`` for a
        symmetric ``A``: additions and products only.
        """
        A = -np.asarray(hess, dtype=np.float64)
        if self.intercept is not None:
            k = self.intercept
            A = A - np.outer(self.m, A[k])
            A = A.T - np.outer(self.m, A.T[k])
        s = 1.0 / np.sqrt(self.D)
        return _sym(A * s[:, None] * s[None, :])

    def from_equilibrated(self, X: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``T D^-1/2 X D^-1/2 T' v``: a matrix of the equilibrated coordinates applied to ``v``."""
        s = 1.0 / np.sqrt(self.D)
        return self.to_beta(s * (X @ (s * self.to_theta(v))))

    def from_equilibrated_root(self, Z: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``T D^-1/2 Z Z D^-1/2 T' v`` for a symmetric ``Z`` (``C^-1/2``: ``Z Z = C^-1``).

        Applied as two products with ``Z`` rather than one with ``C^-1``: where ``C`` is
        extremely ill-conditioned (NIST's Filip, 1.5e19) the rounded ``C^-1`` has entries of
        1e18 and a float64 product with it no correct digits in the well-determined
        directions, while ``Z``'s entries are only ``sqrt(cond(C))``.
        """
        s = 1.0 / np.sqrt(self.D)
        return self.to_beta(s * (Z @ (Z @ (s * self.to_theta(v)))))


@dataclass(frozen=True)
class MatrixPreconditioner:
    """The full-matrix preconditioner ``R = T D^-1/2 C^-1/2`` (see the module docstring).

    It has the interface of :class:`Preconditioner` with a unit ``D``: :meth:`to_theta` maps a
    gradient to the whitened coordinates (``R' g``), :meth:`to_beta` a step back (``R s``), and
    :meth:`decrement` is ``g' R R' g``, the Newton decrement with the Hessian it was built from.

    Attributes
    ----------
    diagonal : Preconditioner
        The centring and diagonal scaling applied first.
    Z : ndarray, shape (P, P)
        ``(C + mu I)^-1/2`` of the equilibrated curvature ``C``.
    damping : float
        ``mu``: 0 when ``-H`` was positive definite.
    residual : float
        Frobenius norm of ``I - Z (C + mu I) Z`` as left by the Newton-Schulz iteration.
    products : int
        P x P products spent building it.
    accurate : bool
        Whether it was built from the double-double Hessian (:func:`accurate_inverse`).
    """

    diagonal: Preconditioner
    Z: np.ndarray
    damping: float
    residual: float
    products: int
    accurate: bool = False

    @classmethod
    def from_hessian(
        cls,
        hess: np.ndarray,
        intercept: int | None,
        n_beta: int,
        accurate_hessian: Callable[[], tuple[np.ndarray, np.ndarray] | None] | None = None,
    ) -> MatrixPreconditioner:
        """Build from the Hessian of the log-likelihood (products, additions, scalings only).

        ``accurate_hessian`` (the objective's, Gaussian only) gives the Hessian in
        double-double; it is asked for, and the preconditioner built from it in double-double
        (:func:`accurate_inverse`), when the float64 iteration needed a damping or stopped at a
        residual above :data:`DD_TRIGGER` (:func:`needs_accurate_hessian`).
        """
        diag = Preconditioner.from_hessian(hess, intercept, n_beta)
        C = diag.equilibrate(hess)
        r, mu, products = damped_inverse(C, sqrt=True)
        if accurate_hessian is not None and needs_accurate_hessian(r, mu):
            dd = accurate_hessian()
            built = accurate_inverse(dd, intercept, n_beta, sqrt=True) if dd is not None else None
            if built is not None:
                pre, ra = built
                return cls(pre, ra.X, 0.0, ra.residual, products + ra.products, True)
        return cls(diag, r.X, mu, r.residual, products)

    @property
    def intercept(self) -> int | None:
        return self.diagonal.intercept

    @property
    def D(self) -> np.ndarray:
        """Unit curvature in the whitened coordinates."""
        return np.ones(self.Z.shape[0])

    def to_theta(self, grad: np.ndarray) -> np.ndarray:
        """Gradient in whitened coordinates: ``R' g = C^-1/2 D^-1/2 T' g``."""
        s = 1.0 / np.sqrt(self.diagonal.D)
        return self.Z @ (s * self.diagonal.to_theta(grad))

    def to_beta(self, step_theta: np.ndarray) -> np.ndarray:
        """A step in whitened coordinates mapped back to the parameters: ``R s``."""
        s = 1.0 / np.sqrt(self.diagonal.D)
        return self.diagonal.to_beta(s * (self.Z @ np.asarray(step_theta, dtype=np.float64)))

    def direction(self, grad: np.ndarray) -> np.ndarray:
        """``R R' g``: the Newton step with the Hessian the preconditioner was built from."""
        return self.to_beta(self.to_theta(grad))

    def decrement(self, grad: np.ndarray) -> float:
        """``g' R R' g``: the Newton decrement with that Hessian."""
        g = self.to_theta(grad)
        return float(g @ g)


@dataclass
class GradientStop:
    """The stopping rule shared by the gradient solvers.

    Converged when both the estimated decrement (deviance still to gain, in likelihood units)
    and the relative change of the log-likelihood over the last iteration are at most ``tol``.
    Likelihood units divide by the dispersion ``phi`` (Gaussian: ``SSR / n``), floored at
    ``phi_floor``: a Gaussian model that fits exactly (NIST's Wampler1) has ``phi -> 0``, and
    judging the remaining gain relative to rounding error would never end.
    """

    tol: float
    pre: Preconditioner | MatrixPreconditioner
    phi_floor: float = 0.0
    #: ``sum(v^2)`` for the float64 gradient's rounding ``v`` in the whitened coordinates
    #: (:func:`rounding_decrement`): divided by ``phi``, the decrement that rounding alone
    #: gives. Set only for a preconditioner built from the double-double Hessian (NIST's
    #: Filip: there the float64 gradient's rounding keeps the decrement far above ``tol``;
    #: the double-double polish step then finishes); 0 otherwise.
    noise: float = 0.0

    def check(self, ll_prev: float, ll: float, grad: np.ndarray, phi: float) -> tuple[bool, float, float]:
        """Return ``(converged, decrement, relative_change)``.

        The decrement is compared with ``max(tol, noise / phi)``."""
        phi = max(phi, self.phi_floor)
        dec = self.pre.decrement(grad) / phi
        if (
            self.noise > 0
            and dec <= self.noise / phi
            and abs(ll - ll_prev) <= 1e-13 * (abs(ll) + 1.0) + self.noise
        ):
            return True, dec, abs(ll - ll_prev) / phi / (abs(ll) / phi + 1.0)
        rel = abs(ll - ll_prev) / phi / (abs(ll) / phi + 1.0)
        return bool(dec <= self.tol and rel <= self.tol), dec, rel

    def message(self, dec: float, rel: float) -> str:
        """How convergence was met, for the result."""
        return f"decrement {dec:.3g} and relative LL change {rel:.3g} <= tol={self.tol:g}"


@dataclass
class StallMonitor:
    """Decides when the preconditioner should be rebuilt from a fresh Hessian.

    With a preconditioner built from the Hessian at the current point, the decrement falls by
    orders of magnitude every few iterations. It is *stalled* when, over the last ``window``
    iterations since the preconditioner was (re)built, the decrement fell by less than
    ``factor``: the curvature has moved away from the one the preconditioner fits.
    """

    window: int
    factor: float = 10.0
    history: list[float] | None = None

    def reset(self) -> None:
        """Start over after a rebuild."""
        self.history = []

    def update(self, decrement: float) -> bool:
        """Record this iteration's decrement; True if a rebuild is due."""
        if self.history is None:
            self.history = []
        self.history.append(decrement)
        h = self.history
        if len(h) <= self.window:
            return False
        return bool(h[-1] * self.factor > h[-1 - self.window])


def rounding_decrement(objective, e, pre) -> float:
    """``sum(v^2)`` with ``v = |R'| u``: the objective's float64 gradient rounding ``u``
    (``gradient_rounding(e)``, per coefficient) in the whitened coordinates of ``pre``
    (``R'`` formed column by column from unit vectors: products only); 0 where the objective
    has no such estimate."""
    rounding = getattr(objective, "gradient_rounding", None)
    u = rounding(e) if rounding is not None else None
    if u is None:
        return 0.0
    P = len(e.params)
    u = np.concatenate([np.asarray(u, dtype=np.float64), np.zeros(P - len(u))])
    Rt = np.column_stack([pre.to_theta(col) for col in np.eye(P)])
    v = np.abs(Rt) @ u
    return float(v @ v)


#: relative movement of the estimates that a float64 gradient's rounding may cause before the
#: last step takes the gradient in double-double (10^4 below the 1e-6 the solvers promise)
ACCURATE_RTOL = 1e-10


def accurate_evaluator(objective, e, direction: Callable[[np.ndarray], np.ndarray]) -> Callable | None:
    """The objective's ``accurate_evaluation`` if a float64 gradient's rounding can move the
    estimates at ``e`` by more than :data:`ACCURATE_RTOL` relative, else ``None``.

    The objective estimates that rounding per coefficient (``gradient_rounding(e)``: a vector
    ``u``, or ``None`` when it has no accurate evaluation); the estimates then move by up to
    about ``|M| u`` where ``M`` is the map from a gradient to the step (``direction``, ``R R'`` or
    the Newton-Schulz inverse), formed column by column from unit vectors: products only.
    Each coefficient is judged against ``max(|b_j|, 1e-3 max|b|)``. On NIST's Wampler1-5 the
    bound asks for it (float64 moves Wampler5's estimates by 3e-6, Wampler4's by 4e-8), on
    Norris and Pontius (float64 noise 1e-13) and on well-scaled panels it does not, so those
    fits spend no extra pass.
    """
    accurate = getattr(objective, "accurate_evaluation", None)
    rounding = getattr(objective, "gradient_rounding", None)
    if accurate is None or rounding is None:
        return None
    u = rounding(e)
    if u is None:
        return None
    b = np.asarray(e.params, dtype=np.float64)
    u = np.concatenate([np.asarray(u, dtype=np.float64), np.zeros(b.size - len(u))])
    M = np.column_stack([direction(col) for col in np.eye(b.size)])
    moved = np.abs(M) @ u
    scale = np.maximum(np.abs(b), 1e-3 * np.max(np.abs(b), initial=0.0))
    return accurate if bool(np.any(~(moved <= ACCURATE_RTOL * scale))) else None
