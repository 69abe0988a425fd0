"""Newton-Raphson with step-halving on the log-likelihood.

Each iteration is one pass: the LL, gradient and Hessian at the trial point come back
together; the trial is accepted when the LL does not fall (else the step is halved, which costs
a pass per halving). Convergence is declared when the Newton decrement
``lambda^2 = g' (-H)^{-1} g`` (the predicted gain in deviance, in likelihood units) is below
``tol`` both in absolute terms and relative to the deviance; the final Newton step is then
taken, so the returned parameters are one quadratic step past the last evaluation.

Accuracy on ill-conditioned designs. The step solves ``(-H) s = g`` by Cholesky of the
*equilibrated* ``-H`` (scaled to unit diagonal), refined once when its condition number exceeds
:data:`REFINE_COND`; every Newton iteration recomputes the gradient in float64, which refines
further. That is accurate while ``cond(-H)`` (equilibrated) is well below ``1 / eps``. Forming
``-H = X' W X`` squares the condition of the weighted design, so designs such as NIST's Filip
(a degree-10 polynomial: ``cond(-H)`` about 3e16 after scaling) have no correct digit by
that route. When the objective offers ``qr_evaluation`` (one pass giving the evaluation and the
tall-skinny QR factor ``[R, Q'r]`` of ``sqrt(W) [X | r]``, :mod:`daskglm.kernels.qr`) and the
equilibrated condition number exceeds ``NewtonConfig.qr_cond`` (by default the objective's:
1e6 for the Gaussian family, whose large-residual fits lose ``cond^2 * eps * |r|`` through the
float64 gradient, 1e10 for the others, where the QR pass's cost, several Hessian passes, is
only worth it when the normal equations keep fewer than about 6 digits), the solver switches
to steps ``R^{-1} Q' r``, whose error is ``cond * eps`` instead of ``cond^2 * eps``, for the
rest of the fit (and the objective then gives ``R`` for the standard errors). For the Gaussian
family the QR pass also returns the gradient accumulated in extended precision and the step is
refined by the corrected semi-normal equations (:func:`qr_direction`). The switch costs one
extra pass; each later pass forms the chunk's design, several times the cost of a Hessian pass
(which works on the blocks' own grids). ``qr="always"`` and ``qr="never"`` force the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from .base import IterationLog, Objective, SolverResult, decrement_small, deviance_scale, warn_not_converged

__all__ = [
    "NewtonConfig",
    "newton",
    "newton_direction",
    "equilibrated_cholesky",
    "equilibrated_solve",
    "information_condition",
    "qr_direction",
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
    qr : {"auto", "always", "never"}
        Newton steps from a tall-skinny QR of the weighted design (see the module docstring):
        ``"auto"`` switches to them when the equilibrated Hessian's condition number exceeds
        ``qr_cond``.
    qr_cond : float, optional
        The condition number at which ``qr="auto"`` switches; by default the objective's
        ``qr_cond`` (the panel objective: 1e6 for the Gaussian family, 1e10 for the others),
        else 1e10.
    """

    tol: float = 1e-8
    max_iter: int = 100
    max_halvings: int = 30
    qr: str = "auto"
    qr_cond: float | None = None

    def __post_init__(self):
        if self.qr not in ("auto", "always", "never"):
            raise ValueError(f"qr={self.qr!r} must be 'auto', 'always' or 'never'")


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


#: Largest condition number of the column-scaled R for which the step is refined by the
#: corrected semi-normal equations ``R'R s = g`` with an extended-precision gradient (their
#: error contracts by about ``cond^2 * eps`` per iteration); above it the step is ``R^{-1} Q'r``.
CSNE_COND = 1e7


def qr_direction(factor, grad: np.ndarray, hess: np.ndarray | None) -> np.ndarray | None:
    """The Newton step from a TSQR factor (:class:`daskglm.kernels.qr.TSQR`): ``factor.r`` is
    ``[[R, z], [0, rho]]`` of ``sqrt(W) [X | r]`` (``R'R = -H`` on the coefficients,
    ``R'z = g``), so the step is ``R^{-1} z``, the weighted least-squares solution, without
    forming ``R'R``. With an extended-precision gradient ``factor.grad`` (Gaussian) and a
    column-scaled ``cond(R)`` below :data:`CSNE_COND`, ``z`` is replaced by ``R^{-T} grad``
    (corrected semi-normal equations): each Newton iteration is then a step of iterative
    refinement with an accurate residual, which removes the ``cond^2 * eps * |r|`` term of
    large-residual problems.

    Extra parameters (NB2's log-alpha, the rows of ``hess``/``grad`` past ``R``) are solved
    with the Schur complement of the coefficients' block. Returns ``None`` when ``R`` or the
    Schur complement is singular (the caller falls back to the Hessian).
    """
    F = factor.r
    nb = F.shape[0] - 1
    R, z = F[:nb, :nb], F[:nb, nb]
    norms = np.linalg.norm(R, axis=0)
    if not np.all(np.isfinite(F)) or not np.all(np.abs(np.diag(R)) > 1e-14 * norms):
        return None
    if factor.grad is not None and np.linalg.cond(R / norms) < CSNE_COND:
        z = linalg.solve_triangular(R, factor.grad, trans="T")
    if grad.size == nb:
        return linalg.solve_triangular(R, z)
    A = -0.5 * (hess + hess.T)
    b, c = A[:nb, nb:], A[nb:, nb:]
    u = linalg.solve_triangular(R, b, trans="T")  # R^{-T} b
    schur = c - u.T @ u
    if not np.all(np.linalg.eigvalsh(0.5 * (schur + schur.T)) > 0):
        return None
    st = np.linalg.solve(schur, grad[nb:] - u.T @ z)
    return np.concatenate([linalg.solve_triangular(R, z - u @ st), st])


def newton(
    objective: Objective, start: np.ndarray, config: NewtonConfig = NewtonConfig(), callback=None
) -> SolverResult:
    """Maximise the objective by Newton-Raphson from ``start``."""
    log = IterationLog(objective, callback)
    x = np.asarray(start, dtype=np.float64).copy()
    orthogonal = getattr(objective, "qr_evaluation", None) if config.qr != "never" else None
    use_qr = orthogonal is not None and config.qr == "always"
    threshold = config.qr_cond if config.qr_cond is not None else getattr(objective, "qr_cond", 1e10)

    def evaluate(params):
        return orthogonal(params) if use_qr else (objective(params, hessian=True), None)

    e, factor = evaluate(x)
    if not np.isfinite(e.ll):
        raise FloatingPointError(
            "the log-likelihood is not finite at the starting values; check the data's scale"
        )
    log.add(0, e, 0.0, decrement=np.nan)
    scale = deviance_scale(e, objective.dispersion(e))
    message = f"reached max_iter={config.max_iter} iterations"
    converged = False
    it = 0
    for it in range(1, config.max_iter + 1):
        if (
            orthogonal is not None
            and not use_qr
            and e.hess is not None
            and information_condition(e.hess) > threshold
        ):
            use_qr = True  # from now on: steps from the QR factor (one more pass, here)
            e, factor = evaluate(x)
        step = qr_direction(factor, e.grad, e.hess) if factor is not None else None
        damped = False
        if step is None:
            # an objective may compute the step itself (fixed effects)
            direction = getattr(objective, "direction", None)
            step, damped = direction(e) if direction is not None else newton_direction(e.grad, e.hess)
        phi = objective.dispersion(e)
        lam2 = float(e.grad @ step) / phi
        if decrement_small(lam2, e.deviance, phi, config.tol, scale) and not damped:
            x = x + step
            converged = True
            message = f"Newton decrement {lam2:.3g} <= tol={config.tol:g}"
            log.rows[-1]["decrement"] = lam2
            break
        t = 1.0
        for _ in range(config.max_halvings + 1):
            trial, trial_factor = evaluate(x + t * step)
            if np.isfinite(trial.ll) and trial.ll >= e.ll - 1e-12 * (abs(e.ll) + 1.0):
                break
            t *= 0.5
        else:
            message = (
                f"step halving failed to raise the log-likelihood after max_halvings="
                f"{config.max_halvings} halvings (Newton decrement {lam2:.3g}): the information is "
                "badly conditioned or not positive definite here (a raw calendar year or its "
                "interaction beside fixed effects, NB2's alpha far from its estimate); centre such "
                "covariates, or try solver='lbfgs', which needs no Hessian"
            )
            break
        x = x + t * step
        e, factor = trial, trial_factor
        log.add(it, e, t, decrement=lam2, damped=damped)
    if not converged:
        warn_not_converged("Newton-Raphson", message)
    return SolverResult(x, converged, it, log.rows, message, "newton")
