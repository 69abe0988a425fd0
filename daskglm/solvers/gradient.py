"""Gradient-only solvers: gradient ascent (Armijo or fixed step), Adam and L-BFGS.

Every iteration calls the objective with ``hessian=False``: one pass over the data returning
the log-likelihood and its gradient together. The Hessian is evaluated once, at the starting
values, only to fix a diagonal preconditioner (:mod:`.preconditioning`); inside the loops of
:func:`gradient_descent` and :func:`adam` nothing solves, inverts or factorises a matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from .base import Evaluation, IterationLog, Objective, SolverResult, warn_not_converged
from .preconditioning import GradientStop, Preconditioner

__all__ = [
    "GradientDescentConfig",
    "AdamConfig",
    "LBFGSConfig",
    "gradient_descent",
    "adam",
    "lbfgs",
]


@dataclass(frozen=True)
class GradientDescentConfig:
    """Settings of :func:`gradient_descent`.

    Attributes
    ----------
    tol : float
        Convergence threshold on the estimated Newton decrement and on the relative change of
        the log-likelihood (see :class:`~daskglm.solvers.preconditioning.GradientStop`). The
        default, tighter than Newton's (which ends with a quadratic step), puts the estimates
        within about 1e-6 standard errors of the optimum.
    max_iter : int
        Most iterations.
    step_size : float or None
        ``None``: backtracking (Armijo) line search, whose first trial is the Barzilai-Borwein
        step. A number: a fixed step along the preconditioned gradient, with no line search
        (one pass per iteration; ``1.0`` is a diagonal-Newton step), for settings that cannot
        compare log-likelihoods.
    armijo : float
        Sufficient-increase constant of the line search.
    max_backtracks : int
        Most step halvings within one iteration.
    """

    tol: float = 1e-12
    max_iter: int = 2000
    step_size: float | None = None
    armijo: float = 1e-4
    max_backtracks: int = 40

    def __post_init__(self):
        _check_common(self)
        if self.step_size is not None:
            _require("step_size", self.step_size, self.step_size > 0, "a positive number or None")
        _require("armijo", self.armijo, 0 < self.armijo < 1, "in (0, 1)")
        _require("max_backtracks", self.max_backtracks, self.max_backtracks >= 1, ">= 1")


@dataclass(frozen=True)
class AdamConfig:
    """Settings of :func:`adam` (Kingma & Ba, 2015).

    Adam runs on the mean log-likelihood per unit weight, in standardised coordinates (each
    covariate centred and scaled to unit curvature-weighted standard deviation, so the
    coefficients are of order one and one learning rate fits all). ``beta1``, ``beta2`` and
    ``epsilon`` are the usual defaults (those of PyTorch and Keras). Full-batch Adam with a
    constant rate ends up circling the optimum, so the rate adapts ("bold driver"): a step that
    lowers the log-likelihood multiplies it by ``decay``, one that raises it by ``growth``
    (once changes in the log-likelihood are at the level of rounding, by the sign of its slope
    along the step instead).

    Attributes
    ----------
    tol, max_iter
        As for :class:`GradientDescentConfig`.
    learning_rate : float
        Initial step, in standardised-coefficient units.
    beta1, beta2 : float
        Decay rates of the first and second moment estimates.
    epsilon : float
        Added to the root of the second moment.
    decay : float
        Factor applied to the learning rate after a step that lowers the log-likelihood.
    growth : float
        Factor applied to the learning rate after a step that raises it.
    """

    tol: float = 1e-12
    max_iter: int = 10000
    learning_rate: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    decay: float = 0.7
    growth: float = 1.1

    def __post_init__(self):
        _check_common(self)
        _require("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        _require("beta1", self.beta1, 0 <= self.beta1 < 1, "in [0, 1)")
        _require("beta2", self.beta2, 0 <= self.beta2 < 1, "in [0, 1)")
        _require("epsilon", self.epsilon, self.epsilon > 0, "> 0")
        _require("decay", self.decay, 0 < self.decay <= 1, "in (0, 1] (1 switches the decay off)")
        _require("growth", self.growth, self.growth >= 1, ">= 1 (1 switches the growth off)")


@dataclass(frozen=True)
class LBFGSConfig:
    """Settings of :func:`lbfgs` (scipy's L-BFGS-B on the client).

    Attributes
    ----------
    tol, max_iter
        As for :class:`GradientDescentConfig`.
    memory : int
        Number of correction pairs kept (``maxcor``).
    max_line_search : int
        Most evaluations in one line search (``maxls``).
    """

    tol: float = 1e-12
    max_iter: int = 1000
    memory: int = 10
    max_line_search: int = 40

    def __post_init__(self):
        _check_common(self)
        _require("memory", self.memory, self.memory >= 1, ">= 1")
        _require("max_line_search", self.max_line_search, self.max_line_search >= 1, ">= 1")


#: relative size of rounding error in a log-likelihood summed over many cells: differences
#: below it are noise, neither progress nor setback
LL_NOISE = 1e-13


def _noise(ll: float) -> float:
    return LL_NOISE * (abs(ll) + 1.0)


def _require(name: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: it must be {what}")


def _check_common(cfg) -> None:
    _require("tol", cfg.tol, cfg.tol > 0, "> 0")
    _require("max_iter", cfg.max_iter, int(cfg.max_iter) >= 1, ">= 1")


def _begin(objective: Objective, start: np.ndarray, config, callback):
    """Evaluate the start with its Hessian (one pass), fix the preconditioner, log row 0.

    Returns ``(x, evaluation, preconditioner, stopping rule, iteration log)``.
    """
    x = np.asarray(start, dtype=np.float64).copy()
    e = objective(x, hessian=True)
    if not (np.isfinite(e.ll) and np.all(np.isfinite(e.grad)) and np.all(np.isfinite(e.hess))):
        raise FloatingPointError(
            "the log-likelihood or its derivatives are not finite at the starting values; "
            "check the data's scale or pass start_params"
        )
    pre = Preconditioner.from_hessian(e.hess, objective.intercept_index, objective.n_beta)
    log = IterationLog(objective, callback)
    log.add(0, e, 0.0, decrement=pre.decrement(e.grad) / objective.dispersion(e))
    return x, e, pre, GradientStop(config.tol, pre), log


def gradient_descent(
    objective: Objective,
    start: np.ndarray,
    config: GradientDescentConfig = GradientDescentConfig(),
    callback=None,
) -> SolverResult:
    """Maximise the objective by preconditioned gradient ascent from ``start``."""
    x, e, pre, stop, log = _begin(objective, start, config, callback)
    fixed = config.step_size is not None
    t = float(config.step_size) if fixed else 1.0
    converged, it = False, 0
    message = f"reached max_iter={config.max_iter} iterations"
    for it in range(1, config.max_iter + 1):
        g_theta = pre.to_theta(e.grad)
        step_theta = g_theta / pre.D
        slope = float(g_theta @ step_theta)
        if fixed:
            trial = objective(x + t * pre.to_beta(step_theta), hessian=False)
            if not np.isfinite(trial.ll):
                message = (
                    f"the log-likelihood became non-finite at iteration {it}: "
                    f"step_size={t:g} is too large for this problem"
                )
                break
        else:
            for _ in range(config.max_backtracks + 1):
                trial = objective(x + t * pre.to_beta(step_theta), hessian=False)
                if np.isfinite(trial.ll) and trial.ll >= e.ll + config.armijo * t * slope - _noise(e.ll):
                    break
                t *= 0.5
            else:
                message = (
                    f"the line search found no increase after max_backtracks={config.max_backtracks} "
                    "halvings (the gradient is at the level of rounding error, or the model is "
                    "not identified)"
                )
                break
        x = x + t * pre.to_beta(step_theta)
        prev, e = e, trial
        phi = objective.dispersion(e)
        done, dec, rel = stop.check(prev.ll, e.ll, e.grad, phi)
        log.add(it, e, t, decrement=dec, rel_change=rel)
        if done:
            converged = True
            message = stop.message(dec, rel)
            break
        if not fixed:
            # Barzilai-Borwein: the step that fits the curvature seen along the last move
            y_theta = pre.to_theta(prev.grad - e.grad)
            s_theta = t * step_theta
            sy = float(s_theta @ y_theta)
            t = float(np.clip((s_theta * pre.D) @ s_theta / sy, 1e-4, 1e4)) if sy > 0 else 1.0
    if not converged:
        warn_not_converged("gradient descent", message)
    return SolverResult(x, converged, it, log.rows, message, "gd")


def adam(
    objective: Objective, start: np.ndarray, config: AdamConfig = AdamConfig(), callback=None
) -> SolverResult:
    """Maximise the objective by Adam from ``start`` (see :class:`AdamConfig`)."""
    x, e, pre, stop, log = _begin(objective, start, config, callback)
    # standardised coordinates u = S theta: unit curvature-weighted variance per covariate
    nb = objective.n_beta
    ref = pre.D[pre.intercept] if pre.intercept is not None else float(np.median(pre.D[:nb]))
    S = np.ones_like(pre.D)
    S[:nb] = np.sqrt(pre.D[:nb] / ref)
    b1, b2 = config.beta1, config.beta2
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    lr = config.learning_rate
    converged, it = False, 0
    message = f"reached max_iter={config.max_iter} iterations"
    for it in range(1, config.max_iter + 1):
        g_u = pre.to_theta(e.grad) / S / ref
        m = b1 * m + (1.0 - b1) * g_u
        v = b2 * v + (1.0 - b2) * g_u * g_u
        m_hat = m / (1.0 - b1**it)
        v_hat = v / (1.0 - b2**it)
        step = pre.to_beta(lr * m_hat / (np.sqrt(v_hat) + config.epsilon) / S)
        trial = objective(x + step, hessian=False)
        if not np.isfinite(trial.ll):
            lr *= config.decay
            log.add(it, e, lr, rejected=True)
            continue
        x = x + step
        prev, e = e, trial
        used_lr = lr
        change = e.ll - prev.ll
        if abs(change) <= _noise(prev.ll):
            # below rounding in the LL: judge by the slope along the step at the new point
            change = float(e.grad @ step)
        lr *= config.decay if change < 0 else config.growth
        phi = objective.dispersion(e)
        done, dec, rel = stop.check(prev.ll, e.ll, e.grad, phi)
        log.add(it, e, used_lr, decrement=dec, rel_change=rel)
        if done:
            converged = True
            message = stop.message(dec, rel)
            break
        if lr < 1e-14:
            message = f"the learning rate decayed below 1e-14 at iteration {it}"
            break
    if not converged:
        warn_not_converged("Adam", message)
    return SolverResult(x, converged, it, log.rows, message, "adam")


def lbfgs(
    objective: Objective, start: np.ndarray, config: LBFGSConfig = LBFGSConfig(), callback=None
) -> SolverResult:
    """Maximise the objective with scipy's L-BFGS-B, in preconditioned coordinates.

    The variables handed to scipy are ``z = D^(1/2) theta`` (unit curvature on the diagonal),
    the function is the negative log-likelihood change from the start in likelihood units;
    each function-and-gradient call is one pass. The shared stopping rule ends the run (scipy's
    own tolerances are switched off).
    """
    x0, e0, pre, stop, log = _begin(objective, start, config, callback)
    phi0 = objective.dispersion(e0)
    root = np.sqrt(pre.D)
    cache: dict[bytes, Evaluation] = {e0.params.tobytes(): e0}

    def params_of(z: np.ndarray) -> np.ndarray:
        return x0 + pre.to_beta(z / root)

    def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
        x = params_of(z)
        key = x.tobytes()
        e = cache.get(key)
        if e is None:
            e = objective(x, hessian=False)
            cache.clear()
            cache[key] = e
        if not np.isfinite(e.ll):
            return np.inf, np.zeros_like(z)
        return -(e.ll - e0.ll) / phi0, -pre.to_theta(e.grad) / root / phi0

    state = {"prev": e0, "it": 0, "done": False, "message": "", "z": np.zeros_like(x0)}

    def on_iteration(intermediate_result) -> None:
        z = np.asarray(intermediate_result.x)
        e = cache.get(params_of(z).tobytes()) or objective(params_of(z), hessian=False)
        state["it"] += 1
        phi = objective.dispersion(e)
        done, dec, rel = stop.check(state["prev"].ll, e.ll, e.grad, phi)
        log.add(state["it"], e, float(np.linalg.norm(z - state["z"])), decrement=dec, rel_change=rel)
        state.update(prev=e, z=z.copy())
        if done:
            state["done"] = True
            state["message"] = stop.message(dec, rel)
            raise StopIteration

    res = optimize.minimize(
        fun,
        np.zeros_like(x0),
        jac=True,
        method="L-BFGS-B",
        callback=on_iteration,
        options={
            "maxiter": config.max_iter,
            "maxfun": 50 * config.max_iter,
            "maxcor": config.memory,
            "maxls": config.max_line_search,
            "ftol": 0.0,
            "gtol": 0.0,
        },
    )
    x = params_of(state["z"])
    converged = state["done"]
    if converged:
        message = state["message"]
    else:
        message = (
            f"reached max_iter={config.max_iter} iterations"
            if state["it"] >= config.max_iter
            else f"scipy L-BFGS-B stopped: {res.message}"
        )
        warn_not_converged("L-BFGS", message)
    return SolverResult(x, converged, state["it"], log.rows, message, "lbfgs")
