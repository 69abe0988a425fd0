"""Newton-Raphson with step-halving on the log-likelihood.

Each iteration is one pass: the LL, gradient and Hessian at the trial point come back
together; the trial is accepted when the LL does not fall (else the step is halved, which costs
a pass per halving). Convergence is declared when the Newton decrement
``lambda^2 = g' (-H)^{-1} g`` (the predicted gain in deviance, in likelihood units) is below
``tol`` both in absolute terms and relative to the deviance; the final Newton step is then
taken, so the returned parameters are one quadratic step past the last evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from .base import IterationLog, Objective, SolverResult, warn_not_converged

__all__ = [
    "NewtonConfig",
    "newton",
    "newton_direction",
    "equilibrated_cholesky",
    "equilibrated_solve",
    "information_condition",
]


@dataclass(frozen=True)
class NewtonConfig:
    """Settings of :func:`newton`.

    Attributes
    ----------
    tol : float
        Convergence threshold on the Newton decrement (absolute and relative to the deviance).
    max_iter : int
        Most iterations (each at least one pass over the data).
    max_halvings : int
        Most step halvings within one iteration.
    """

    tol: float = 1e-8
    max_iter: int = 100
    max_halvings: int = 30


#: Condition number of the equilibrated Hessian above which the step is refined (one more
#: solve with the residual of the first, in float64).
REFINE_COND = 1e6


def equilibrated_cholesky(A: np.ndarray):
    """Cholesky factor of ``S A S`` with ``S = diag(1/sqrt(diag A))`` (unit diagonal).

    Symmetric diagonal scaling makes the factorisation, the positive-definiteness test and
    the condition estimate independent of the columns' units (dollars, head counts, calendar
    years): what is left is the conditioning of the correlation-like matrix.

    Returns ``(factor, s, rcond)`` where ``factor`` is scipy's ``cho_factor`` of ``S A S``,
    ``s`` the diagonal of ``S`` and ``rcond`` LAPACK's estimate of its reciprocal condition
    number (1-norm); raises ``LinAlgError`` when ``A`` is not positive definite.
    """
    d = np.diag(A)
    if not np.all(np.isfinite(A)) or not np.all(d > 0):
        raise linalg.LinAlgError("not positive definite")
    s = 1.0 / np.sqrt(d)
    As = A * s[:, None] * s[None, :]
    c = linalg.cho_factor(As, check_finite=False)
    anorm = float(np.max(np.sum(np.abs(As), axis=0)))
    rcond, info = linalg.lapack.dpocon(c[0], anorm, uplo="L" if c[1] else "U")
    return c, s, float(rcond) if info == 0 else 0.0


def equilibrated_solve(A: np.ndarray, b: np.ndarray):
    """Solve ``A x = b`` for a symmetric positive definite ``A`` by equilibrated Cholesky,
    with one step of iterative refinement when the equilibrated condition number exceeds
    :data:`REFINE_COND`. Returns ``(x, rcond)``; raises ``LinAlgError`` if ``A`` is not
    positive definite."""
    c, s, rcond = equilibrated_cholesky(A)
    x = s * linalg.cho_solve(c, s * b, check_finite=False)
    if rcond < 1.0 / REFINE_COND:
        x = x + s * linalg.cho_solve(c, s * (b - A @ x), check_finite=False)
    return x, rcond


def information_condition(hess: np.ndarray) -> float:
    """Condition number (estimate) of ``-H`` after symmetric diagonal scaling; ``inf`` when
    it is not positive definite."""
    try:
        _, _, rcond = equilibrated_cholesky(-0.5 * (hess + hess.T))
    except (linalg.LinAlgError, ValueError):
        return np.inf
    return 1.0 / rcond if rcond > 0 else np.inf


def newton_direction(grad: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, bool]:
    """Solve ``(-H) step = g``; where ``-H`` is not positive definite, use the nearest
    modification that is (eigenvalues floored), which still gives an ascent direction.

    ``-H`` is equilibrated (symmetric diagonal scaling to unit diagonal) before it is
    factorised, so raw-scale covariates (GDP in dollars beside an intercept) cost no accuracy,
    and the step is refined once when the equilibrated condition number is large. The
    eigenvalue floor of the modification is also applied to the equilibrated matrix, so a
    small-scale direction is not mistaken for a flat one.

    Returns the step and whether it had to be modified.
    """
    A = -0.5 * (hess + hess.T)
    try:
        step, _ = equilibrated_solve(A, grad)
        if np.all(np.isfinite(step)):
            return step, False
    except (linalg.LinAlgError, ValueError):
        pass
    d = np.abs(np.diag(A))
    s = 1.0 / np.sqrt(np.where(np.isfinite(d) & (d > 0), d, 1.0))
    lam, V = np.linalg.eigh(A * s[:, None] * s[None, :])
    floor = max(1e-8 * np.max(np.abs(lam)), 1e-12)
    lam = np.maximum(np.abs(lam), floor)
    return s * (V @ ((V.T @ (s * grad)) / lam)), True


def newton(
    objective: Objective, start: np.ndarray, config: NewtonConfig = NewtonConfig(), callback=None
) -> SolverResult:
    """Maximise the objective by Newton-Raphson from ``start``."""
    log = IterationLog(objective, callback)
    x = np.asarray(start, dtype=np.float64).copy()
    e = objective(x, hessian=True)
    if not np.isfinite(e.ll):
        raise FloatingPointError(
            "the log-likelihood is not finite at the starting values; check the data's scale"
        )
    log.add(0, e, 0.0, decrement=np.nan)
    message = f"reached max_iter={config.max_iter} iterations"
    converged = False
    it = 0
    for it in range(1, config.max_iter + 1):
        # an objective may compute the step itself (fixed effects, QR-based steps)
        direction = getattr(objective, "direction", None)
        step, damped = direction(e) if direction is not None else newton_direction(e.grad, e.hess)
        phi = objective.dispersion(e)
        lam2 = float(e.grad @ step) / phi
        if lam2 <= config.tol and lam2 <= config.tol * (abs(e.deviance) / phi + 0.1) and not damped:
            x = x + step
            converged = True
            message = f"Newton decrement {lam2:.3g} <= tol={config.tol:g}"
            log.rows[-1]["decrement"] = lam2
            break
        t = 1.0
        for _ in range(config.max_halvings + 1):
            trial = objective(x + t * step, hessian=True)
            if np.isfinite(trial.ll) and trial.ll >= e.ll - 1e-12 * (abs(e.ll) + 1.0):
                break
            t *= 0.5
        else:
            message = (
                f"step halving failed to raise the log-likelihood after max_halvings="
                f"{config.max_halvings} halvings (Newton decrement {lam2:.3g})"
            )
            break
        x = x + t * step
        e = trial
        log.add(it, e, t, decrement=lam2, damped=damped)
    if not converged:
        warn_not_converged("Newton-Raphson", message)
    return SolverResult(x, converged, it, log.rows, message, "newton")
