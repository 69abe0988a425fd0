"""Gradient-only solvers: gradient ascent (Armijo or fixed step), Adam and L-BFGS.

Every iteration calls the objective with ``hessian=False``: one pass over the data returning
the log-likelihood and its gradient together. The Hessian is evaluated at the starting values
(the same pass that evaluates the start) to build a full-matrix preconditioner
(:class:`~.preconditioning.MatrixPreconditioner`: centring, diagonal scaling and the
Newton-Schulz inverse square root of the scaled curvature, all products and additions), and
again, one extra pass each time, when progress stalls (:class:`~.preconditioning.StallMonitor`)
because the curvature has moved. The solvers run in the whitened coordinates ``z`` (``beta =
R z``) where that curvature is the identity, so a unit gradient step is a Newton step with the
last Hessian. At convergence one more full step ``R R' g`` polishes the estimates
(:meth:`_Run.polish`; for the Gaussian, where a float64 gradient's rounding would move the
estimates, with the gradient summed in double-double, one more pass: :mod:`daskglm.kernels.accurate`).
Where the float64 Hessian is too ill-conditioned for that (the float64 Newton-Schulz iteration
needs a damping or stops above a residual of 1e-6: NIST's Filip, condition number 1.5e19), a
Gaussian objective's Hessian is summed in double-double (``accurate_hessian``, one pass, once)
and the preconditioner built from it by the same iterations in double-double arithmetic
(:func:`~.preconditioning.accurate_inverse`); the loop then stops when the decrement is at
the level the float64 gradient's rounding gives (:func:`~.preconditioning.rounding_decrement`)
and the double-double polish step finishes.
Nothing in :func:`gradient_descent` or :func:`adam` solves, inverts or factorises a matrix,
before or inside their loops.

History columns beyond the common ones: ``decrement`` (``g' R R' g`` in likelihood units),
``rel_change``, ``refreshes`` (preconditioner rebuilds so far), ``polish`` and ``rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Evaluation, IterationLog, Objective, SolverResult, warn_not_converged
from .preconditioning import (
    GradientStop,
    MatrixPreconditioner,
    StallMonitor,
    accurate_evaluator,
    rounding_decrement,
)

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
    refresh_window : int
        Rebuild the preconditioner from a fresh Hessian (one extra pass) when the decrement
        has fallen less than tenfold over this many iterations; ``0`` never rebuilds it.
    """

    tol: float = 1e-12
    max_iter: int = 2000
    step_size: float | None = None
    armijo: float = 1e-4
    max_backtracks: int = 40
    refresh_window: int = 5

    def __post_init__(self):
        _check_common(self)
        if self.step_size is not None:
            _require("step_size", self.step_size, self.step_size > 0, "a positive number or None")
        _require("armijo", self.armijo, 0 < self.armijo < 1, "in (0, 1)")
        _require("max_backtracks", self.max_backtracks, self.max_backtracks >= 1, ">= 1")
        _require("refresh_window", self.refresh_window, self.refresh_window >= 0, ">= 0")


@dataclass(frozen=True)
class AdamConfig:
    """Settings of :func:`adam` (Kingma & Ba, 2015).

    Adam runs in the whitened coordinates of the full-matrix preconditioner (unit curvature in
    every direction at the point it was built, so the coordinates are of order one and one
    learning rate fits all); its moment estimates restart when the preconditioner is rebuilt.
    ``beta1``, ``beta2`` and ``epsilon`` are the usual defaults (those of PyTorch and Keras).
    Full-batch Adam with a constant rate ends up circling the optimum, so the rate adapts
    ("bold driver"): a step that lowers the log-likelihood multiplies it by ``decay``, one that
    raises it by ``growth`` (once changes in the log-likelihood are at the level of rounding,
    by the sign of its slope along the step instead).

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
    refresh_window : int
        As for :class:`GradientDescentConfig` (longer: Adam's momentum makes its decrement
        fall unevenly).
    """

    tol: float = 1e-12
    max_iter: int = 10000
    learning_rate: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    decay: float = 0.7
    growth: float = 1.1
    refresh_window: int = 50

    def __post_init__(self):
        _check_common(self)
        _require("learning_rate", self.learning_rate, self.learning_rate > 0, "> 0")
        _require("beta1", self.beta1, 0 <= self.beta1 < 1, "in [0, 1)")
        _require("beta2", self.beta2, 0 <= self.beta2 < 1, "in [0, 1)")
        _require("epsilon", self.epsilon, self.epsilon > 0, "> 0")
        _require("decay", self.decay, 0 < self.decay <= 1, "in (0, 1] (1 switches the decay off)")
        _require("growth", self.growth, self.growth >= 1, ">= 1 (1 switches the growth off)")
        _require("refresh_window", self.refresh_window, self.refresh_window >= 0, ">= 0")


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
    refresh_window : int
        As for :class:`GradientDescentConfig`; a rebuild restarts scipy's L-BFGS-B (its
        correction pairs are dropped) in the new coordinates.
    """

    tol: float = 1e-12
    max_iter: int = 1000
    memory: int = 10
    max_line_search: int = 40
    refresh_window: int = 10

    def __post_init__(self):
        _check_common(self)
        _require("memory", self.memory, self.memory >= 1, ">= 1")
        _require("max_line_search", self.max_line_search, self.max_line_search >= 1, ">= 1")
        _require("refresh_window", self.refresh_window, self.refresh_window >= 0, ">= 0")


#: relative size of rounding error in a log-likelihood summed over many cells: differences
#: below it are noise, neither progress nor setback
LL_NOISE = 1e-13


def _noise(ll: float) -> float:
    return LL_NOISE * (abs(ll) + 1.0)


def _finite_hessian(e: Evaluation) -> bool:
    """The evaluation's Hessian is finite (or not formed: the objective preconditions itself)."""
    return e.hess is None or bool(np.all(np.isfinite(e.hess)))


def _require(name: str, value, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: it must be {what}")


def _check_common(cfg) -> None:
    _require("tol", cfg.tol, cfg.tol > 0, "> 0")
    _require("max_iter", cfg.max_iter, int(cfg.max_iter) >= 1, ">= 1")


class _Run:
    """State shared by the gradient solvers: preconditioner, stopping rule, rebuilds, log."""

    def __init__(self, objective: Objective, e0: Evaluation, config, callback):
        self.objective = objective
        self.window = int(config.refresh_window)
        self.pre = self._build(e0)
        phi0 = objective.dispersion(e0)
        self.stop = GradientStop(config.tol, self.pre, phi_floor=LL_NOISE * phi0)
        self._set_noise(e0)
        self.monitor = StallMonitor(max(self.window, 1))
        self.log = IterationLog(objective, callback)
        self.refreshes = 0

    def _build(self, e: Evaluation) -> MatrixPreconditioner:
        ob = self.objective
        # an objective whose Hessian is too large to form (fixed effects: a parameter per
        # level) builds its own preconditioner, with the same interface, from the evaluation
        own = getattr(ob, "preconditioner", None)
        if own is not None:
            return own(e)
        return MatrixPreconditioner.from_hessian(
            e.hess, ob.intercept_index, ob.n_beta, getattr(ob, "accurate_hessian", None)
        )

    def _set_noise(self, e: Evaluation) -> None:
        """Where the preconditioner came from the double-double Hessian, the decrement that
        the float64 gradient's rounding alone gives (:func:`~.preconditioning.rounding_decrement`)
        is where the loop stops and the double-double polish takes over."""
        accurate = getattr(self.pre, "accurate", False)
        self.stop.noise = rounding_decrement(self.objective, e, self.pre) if accurate else 0.0

    def phi(self, e: Evaluation) -> float:
        return max(self.objective.dispersion(e), self.stop.phi_floor)

    def due(self, decrement: float) -> bool:
        """Record the decrement; True when the preconditioner should be rebuilt."""
        return self.window > 0 and self.monitor.update(decrement)

    def refresh(self, x: np.ndarray, e: Evaluation) -> Evaluation:
        """One extra pass at ``x`` with the Hessian; rebuild the preconditioner from it."""
        fresh = self.objective(x, hessian=True)
        if not (np.isfinite(fresh.ll) and np.all(np.isfinite(fresh.grad)) and _finite_hessian(fresh)):
            return e
        self.pre = self._build(fresh)
        self.stop.pre = self.pre
        self._set_noise(fresh)
        self.monitor.reset()
        self.refreshes += 1
        return fresh

    def polish(self, x: np.ndarray, iteration: int) -> tuple[np.ndarray, int]:
        """After convergence, one full preconditioned step ``x + R R' g`` (one pass, or two).

        With the preconditioner built from a recent Hessian this is a Newton step: it takes
        the estimates from the stopping rule's accuracy (``tol`` in likelihood units, i.e.
        ``sqrt(tol)`` standard errors) to that of the gradient's rounding error, which
        matters for coefficients far smaller than their standard errors (NIST's Wampler4-5).
        Where a float64 gradient's rounding (``eps |X|' |w r|``, large where the residuals are)
        could move the estimates by more than 1e-10 relative and the objective has an
        ``accurate_evaluation`` (the Gaussian: ``X' w r`` summed in double-double,
        :mod:`daskglm.kernels.accurate`; see :func:`~.preconditioning.accurate_evaluator`), the
        gradient at ``x`` is first recomputed that way (one more pass, no row) and the step's
        trial is evaluated that way too: float64 would leave the estimates up to 5e-6 off on
        NIST's Wampler5. If the step does not cut the
        decrement a hundredfold, the preconditioner was built too far away (e.g. a start far
        from the estimates that never stalled): it is rebuilt here (one Hessian pass) and the
        step taken again. A step is kept only if neither the log-likelihood (beyond rounding)
        nor the decrement rises. Each step is logged as one more iteration (``polish=True``;
        ``rejected=True`` with the previous evaluation if it was not kept;
        ``accurate_gradient``), so the history's last row is at the estimates. Returns the
        estimates and the iteration count.
        """
        e = self.log_last
        accurate = accurate_evaluator(self.objective, e, self.pre.direction)
        if accurate is not None:
            e_acc = accurate(x)
            if e_acc is not None and np.isfinite(e_acc.ll) and np.all(np.isfinite(e_acc.grad)):
                e = e_acc
            else:
                accurate = None

        def evaluate(z: np.ndarray) -> Evaluation:
            t = accurate(z) if accurate is not None else None
            return t if t is not None else self.objective(z, hessian=False)

        for attempt in range(2):
            before = self.pre.decrement(e.grad)
            trial = evaluate(x + self.pre.direction(e.grad))
            after = self.pre.decrement(trial.grad) if np.all(np.isfinite(trial.grad)) else np.inf
            # with the double-double gradient the decrement is the reliable judge: a log-likelihood
            # summed in float64 from residuals of a cancelling eta (NIST Filip: terms of 1e3
            # summing to 1) carries rounding above ``_noise`` (1e-12 against a log-likelihood
            # of 4e-4 there), so a step that cuts the accurate decrement a hundredfold is kept
            converged_step = accurate is not None and after <= 1e-2 * before
            kept = (
                np.isfinite(trial.ll)
                and after <= before
                and (trial.ll >= e.ll - _noise(e.ll) or converged_step)
            )
            iteration += 1
            flags = {"polish": True, "accurate_gradient": accurate is not None}
            if kept:
                rel = abs(trial.ll - e.ll) / self.phi(trial) / (abs(trial.ll) / self.phi(trial) + 1.0)
                x, e = trial.params, trial
                self.add(iteration, e, 1.0, decrement=after / self.phi(e), rel_change=rel, **flags)
            else:
                self.add(iteration, e, 0.0, decrement=before / self.phi(e), rejected=True, **flags)
            if attempt or self.window == 0 or (kept and after <= 1e-2 * before):
                break
            fresh = self.refresh(x, e)
            if accurate is None:  # else keep the accurate gradient at x; only R changed
                e = fresh
            self.log_last = e
        return x, iteration

    def add(self, iteration: int, e: Evaluation, step: float, **extra) -> None:
        self.log_last = e
        self.log.add(iteration, e, step, refreshes=self.refreshes, **extra)


def _begin(objective: Objective, start: np.ndarray, config, callback):
    """Evaluate the start with its Hessian (one pass), build the preconditioner, log row 0.

    Returns ``(x, evaluation, run state)``.
    """
    x = np.asarray(start, dtype=np.float64).copy()
    e = objective(x, hessian=True)
    if not (np.isfinite(e.ll) and np.all(np.isfinite(e.grad)) and _finite_hessian(e)):
        raise FloatingPointError(
            "the log-likelihood or its derivatives are not finite at the starting values; "
            "check the data's scale or pass start_params"
        )
    run = _Run(objective, e, config, callback)
    run.add(0, e, 0.0, decrement=run.pre.decrement(e.grad) / run.phi(e))
    return x, e, run


def _ascend(
    objective: Objective,
    run: _Run,
    x: np.ndarray,
    e: Evaluation,
    iterations: range,
    step_size: float | None,
    armijo: float,
    max_backtracks: int,
) -> tuple[np.ndarray, int, bool, str]:
    """Preconditioned gradient ascent over ``iterations``; returns ``(x, it, converged, message)``.

    The line search accepts a trial whose log-likelihood is within rounding of the Armijo
    target, so it still moves once LL differences are below rounding (the gradient is not).
    """
    fixed = step_size is not None
    t = float(step_size) if fixed else 1.0
    it = iterations.start - 1
    message = f"reached max_iter={iterations.stop - 1} iterations"
    for it in iterations:
        pre = run.pre
        step_theta = pre.to_theta(e.grad) / pre.D
        slope = float(step_theta @ (step_theta * pre.D))
        direction = pre.to_beta(step_theta)
        if fixed:
            trial = objective(x + t * direction, hessian=False)
            if not np.isfinite(trial.ll):
                message = (
                    f"the log-likelihood became non-finite at iteration {it}: "
                    f"step_size={t:g} is too large for this problem"
                )
                return x, it, False, message
        else:
            for _ in range(max_backtracks + 1):
                trial = objective(x + t * direction, hessian=False)
                if np.isfinite(trial.ll) and trial.ll >= e.ll + armijo * t * slope - _noise(e.ll):
                    break
                t *= 0.5
            else:
                message = (
                    f"the line search found no increase after max_backtracks={max_backtracks} "
                    "halvings (the gradient is at the level of rounding error, or the model is "
                    "not identified)"
                )
                return x, it, False, message
        x = x + t * direction
        prev, e = e, trial
        done, dec, rel = run.stop.check(prev.ll, e.ll, e.grad, run.phi(e))
        rebuilt = not done and run.due(dec)
        if rebuilt:
            e = run.refresh(x, e)
        run.add(it, e, t, decrement=dec, rel_change=rel)
        if done:
            return x, it, True, run.stop.message(dec, rel)
        if not fixed:
            if rebuilt:
                t = 1.0
            else:
                # Barzilai-Borwein: the step that fits the curvature seen along the last move
                y_theta = pre.to_theta(prev.grad - e.grad)
                s_theta = t * step_theta
                sy = float(s_theta @ y_theta)
                t = float(np.clip((s_theta * pre.D) @ s_theta / sy, 1e-4, 1e4)) if sy > 0 else 1.0
    return x, it, False, message


def gradient_descent(
    objective: Objective,
    start: np.ndarray,
    config: GradientDescentConfig = GradientDescentConfig(),
    callback=None,
) -> SolverResult:
    """Maximise the objective by preconditioned gradient ascent from ``start``.

    The direction is ``R R' g`` (a Newton step with the Hessian the preconditioner was last
    built from); the first trial step is 1 after a rebuild and Barzilai-Borwein otherwise.
    """
    x, e, run = _begin(objective, start, config, callback)
    x, it, converged, message = _ascend(
        objective,
        run,
        x,
        e,
        range(1, config.max_iter + 1),
        config.step_size,
        config.armijo,
        config.max_backtracks,
    )
    if converged and config.step_size is None:  # a fixed step compares no log-likelihoods
        x, it = run.polish(x, it)
    elif not converged:
        warn_not_converged("gradient descent", message)
    return SolverResult(x, converged, it, run.log.rows, message, "gd")


def adam(
    objective: Objective, start: np.ndarray, config: AdamConfig = AdamConfig(), callback=None
) -> SolverResult:
    """Maximise the objective by Adam from ``start`` (see :class:`AdamConfig`)."""
    x, e, run = _begin(objective, start, config, callback)
    b1, b2 = config.beta1, config.beta2
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    k = 0  # Adam's step count since its moments were (re)started
    lr = config.learning_rate
    converged, it = False, 0
    message = f"reached max_iter={config.max_iter} iterations"
    for it in range(1, config.max_iter + 1):
        k += 1
        g_u = run.pre.to_theta(e.grad)
        m = b1 * m + (1.0 - b1) * g_u
        v = b2 * v + (1.0 - b2) * g_u * g_u
        m_hat = m / (1.0 - b1**k)
        v_hat = v / (1.0 - b2**k)
        step = run.pre.to_beta(lr * m_hat / (np.sqrt(v_hat) + config.epsilon))
        trial = objective(x + step, hessian=False)
        if not np.isfinite(trial.ll):
            lr *= config.decay
            run.add(it, e, lr, rejected=True)
            continue
        x = x + step
        prev, e = e, trial
        used_lr = lr
        change = e.ll - prev.ll
        if abs(change) <= _noise(prev.ll):
            # below rounding in the LL: judge by the slope along the step at the new point
            change = float(e.grad @ step)
        lr *= config.decay if change < 0 else config.growth
        done, dec, rel = run.stop.check(prev.ll, e.ll, e.grad, run.phi(e))
        if not done and run.due(dec):
            e = run.refresh(x, e)
            m, v, k = np.zeros_like(x), np.zeros_like(x), 0
        run.add(it, e, used_lr, decrement=dec, rel_change=rel)
        if done:
            converged = True
            message = run.stop.message(dec, rel)
            x, it = run.polish(x, it)
            break
        if lr < 1e-14:
            message = f"the learning rate decayed below 1e-14 at iteration {it}"
            break
    if not converged:
        warn_not_converged("Adam", message)
    return SolverResult(x, converged, it, run.log.rows, message, "adam")


class _Converged(Exception):
    """Raised out of scipy's L-BFGS-B when a line-search trial point meets the stopping rule."""


def lbfgs(
    objective: Objective, start: np.ndarray, config: LBFGSConfig = LBFGSConfig(), callback=None
) -> SolverResult:
    """Maximise the objective with scipy's L-BFGS-B, in the preconditioner's whitened coordinates.

    The variables handed to scipy are ``z`` with ``beta = beta_a + R z`` (``beta_a`` where the
    preconditioner was last built), the function is the negative log-likelihood change from
    ``beta_a`` in likelihood units; each function-and-gradient call is one pass. The shared
    stopping rule ends the run (scipy's own tolerances are switched off). When progress stalls
    the preconditioner is rebuilt at the current point and scipy restarted from there.
    """
    from scipy import optimize  # imported here: ~17 MB in every process that imports this module

    x, e, run = _begin(objective, start, config, callback)
    cache: dict[bytes, Evaluation] = {e.params.tobytes(): e}
    state = {"prev": e, "it": 0, "done": False, "refresh": False, "message": ""}
    while True:
        anchor, e_anchor, pre = x, e, run.pre
        phi0 = run.phi(e_anchor)
        state.update(z=np.zeros_like(anchor), refresh=False)

        def params_of(z: np.ndarray, anchor=anchor, pre=pre) -> np.ndarray:
            return anchor + pre.to_beta(z)

        def fun(z: np.ndarray, e_anchor=e_anchor, pre=pre, phi0=phi0) -> tuple[float, np.ndarray]:
            xz = params_of(z)
            key = xz.tobytes()
            ez = cache.get(key)
            if ez is None:
                ez = objective(xz, hessian=False)
                cache.clear()
                cache[key] = ez
            if not np.isfinite(ez.ll):
                return np.inf, np.zeros_like(z)
            prev = state["prev"]
            if ez is not prev and ez.ll >= prev.ll - _noise(prev.ll):
                # the stopping rule at every evaluation, not only at scipy's iteration ends: near
                # the optimum its line search compares log-likelihoods at rounding level and can
                # spend twenty passes on one step (NIST's Wampler5), where the first trial point
                # already meets the rule (as a step from the last iterate, no worse than it)
                done, dec, rel = run.stop.check(prev.ll, ez.ll, ez.grad, run.phi(ez))
                if done:
                    state.update(converged_at=(z.copy(), ez, dec, rel))
                    raise _Converged
            return -(ez.ll - e_anchor.ll) / phi0, -pre.to_theta(ez.grad) / phi0

        def on_iteration(intermediate_result) -> None:
            z = np.asarray(intermediate_result.x)
            xz = params_of(z)
            ez = cache.get(xz.tobytes()) or objective(xz, hessian=False)
            state["it"] += 1
            done, dec, rel = run.stop.check(state["prev"].ll, ez.ll, ez.grad, run.phi(ez))
            step = float(np.linalg.norm(z - state["z"]))
            state.update(prev=ez, z=z.copy())
            if done:
                run.add(state["it"], ez, step, decrement=dec, rel_change=rel)
                state["done"] = True
                state["message"] = run.stop.message(dec, rel)
                raise StopIteration
            if run.due(dec):
                state["refresh"] = True
                state["dec"], state["rel"], state["step"] = dec, rel, step
                raise StopIteration
            run.add(state["it"], ez, step, decrement=dec, rel_change=rel)
            if state["it"] >= config.max_iter:
                raise StopIteration

        try:
            res = optimize.minimize(
                fun,
                np.zeros_like(anchor),
                jac=True,
                method="L-BFGS-B",
                callback=on_iteration,
                options={
                    "maxiter": config.max_iter - state["it"],
                    "maxfun": 50 * config.max_iter,
                    "maxcor": config.memory,
                    "maxls": config.max_line_search,
                    "ftol": 0.0,
                    "gtol": 0.0,
                },
            )
        except _Converged:
            z, ez, dec, rel = state.pop("converged_at")
            state["it"] += 1
            run.add(state["it"], ez, float(np.linalg.norm(z - state["z"])), decrement=dec, rel_change=rel)
            state.update(prev=ez, z=z, done=True, message=run.stop.message(dec, rel))
        x = params_of(state["z"])
        e = state["prev"]
        if state["done"] or state["it"] >= config.max_iter:
            break
        if state["refresh"]:
            e = run.refresh(x, e)
            run.add(state["it"], e, state["step"], decrement=state["dec"], rel_change=state["rel"])
            state["prev"] = e
            cache.clear()
            cache[e.params.tobytes()] = e
            continue
        # scipy stopped on its own: its line search needs log-likelihood differences, which
        # near the optimum are at the level of rounding. Finish by preconditioned gradient
        # steps, whose line search tolerates rounding (the gradient is still informative).
        x, it, converged, message = _ascend(
            objective, run, x, e, range(state["it"] + 1, config.max_iter + 1), None, 1e-4, 40
        )
        if not converged:
            message = f"scipy L-BFGS-B stopped ({res.message}), then {message}"
            warn_not_converged("L-BFGS", message)
        else:
            x, it = run.polish(x, it)
        return SolverResult(x, converged, it, run.log.rows, message, "lbfgs")
    converged = state["done"]
    if converged:
        message = state["message"]
        x, state["it"] = run.polish(x, state["it"])
    else:
        message = f"reached max_iter={config.max_iter} iterations"
        warn_not_converged("L-BFGS", message)
    return SolverResult(x, converged, state["it"], run.log.rows, message, "lbfgs")
