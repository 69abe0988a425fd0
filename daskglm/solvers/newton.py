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

__all__ = ["NewtonConfig", "newton", "newton_direction"]


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


def newton_direction(grad: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, bool]:
    """Solve ``(-H) step = g``; where ``-H`` is not positive definite, use the nearest
    modification that is (eigenvalues floored), which still gives an ascent direction.

    Returns the step and whether it had to be modified.
    """
    A = -hess
    try:
        c = linalg.cho_factor(A, check_finite=True)
        return linalg.cho_solve(c, grad), False
    except (linalg.LinAlgError, ValueError):
        lam, V = np.linalg.eigh(0.5 * (A + A.T))
        floor = max(1e-8 * np.max(np.abs(lam)), 1e-12)
        lam = np.maximum(np.abs(lam), floor)
        return V @ ((V.T @ grad) / lam), True


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
        step, damped = newton_direction(e.grad, e.hess)
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
