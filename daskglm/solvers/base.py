"""What every solver shares: the objective it calls, its result, its per-iteration record.

Solvers run on the client and know nothing of dask: they call an :class:`Objective`, which
does one pass over the data per call and returns small arrays.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "ConvergenceWarning",
    "Evaluation",
    "Objective",
    "SolverResult",
    "IterationLog",
    "decrement_small",
    "deviance_scale",
]


class ConvergenceWarning(UserWarning):
    """A fit stopped before meeting its convergence criterion."""


@dataclass
class Evaluation:
    """One pass's results at ``params``: the log-likelihood, gradient, optional Hessian."""

    params: np.ndarray
    ll: float
    grad: np.ndarray
    hess: np.ndarray | None
    deviance: float


class Objective(Protocol):
    """Evaluates the log-likelihood (to maximise) at ``params``; one pass per call."""

    n_params: int

    def __call__(self, params: np.ndarray, *, hessian: bool = True) -> Evaluation: ...

    @property
    def passes(self) -> int: ...

    def dispersion(self, e: Evaluation) -> float:
        """Scale by which LL differences are divided to be in likelihood units (Gaussian)."""
        ...

    def direction(self, e: Evaluation) -> tuple[np.ndarray, bool]:
        """The Newton step ``(-H)^{-1} g`` at an evaluation made with the Hessian, and whether
        it had to be modified to be an ascent direction. Models whose Hessian is too large to
        form (fixed effects) compute it without ``e.hess``."""
        ...


@dataclass
class SolverResult:
    """Where a solver stopped."""

    params: np.ndarray
    converged: bool
    n_iter: int
    history: list[dict]
    message: str
    solver: str


@dataclass
class IterationLog:
    """One row per iteration: LL, deviance, step size, gradient norm, passes, seconds."""

    objective: object
    callback: object = None
    rows: list[dict] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def add(self, iteration: int, e: Evaluation, step: float, **extra) -> dict:
        row = {
            "iteration": iteration,
            "ll": e.ll,
            "deviance": e.deviance,
            "step": step,
            "grad_norm": float(np.max(np.abs(e.grad))) if e.grad.size else 0.0,
            "passes": self.objective.passes,
            "seconds": time.perf_counter() - self.t0,
        }
        row.update(extra)
        self.rows.append(row)
        hook = getattr(self.objective, "on_iteration", None)
        if hook is not None:  # checkpoints, progress display, logging
            hook(row, e.params)
        if self.callback is not None:
            self.callback(row)
        return row


#: the decrement's rounding floor relative to the deviance, with a margin: where it stalls,
#: Newton's decrement is 1e-30..1e-29 of the deviance on fixest's trade panel in Euros x 1e11
#: (deviance 2.4e23) and up to 2e-27 on statsmodels' US macro data in dollars x 1e13 (1e25);
#: below a deviance of 1e17 the bound is under 1e-8 and ``tol`` decides
DECREMENT_ROUNDING = 1e-25


def decrement_small(lam2: float, deviance: float, phi: float, tol: float, scale: float = 1.0) -> bool:
    """Newton's stopping rule: the decrement (the deviance still to gain, in likelihood units)
    is below ``tol`` both absolutely and relative to the deviance.

    The decrement's size is judged: a decrement that is negative beyond ``tol`` is not small
    but a direction that does not ascend (an inexact one), never a reason to stop. ``scale``
    (:func:`deviance_scale` of the starting point, at most 1) shrinks both bounds for a
    response whose whole deviance is tiny (Poisson outcomes of 1e-20: the log-likelihood and
    its decrement scale with y, and the absolute bound alone would stop at the first step).
    The absolute bound is never below :data:`DECREMENT_ROUNDING` times the deviance (in
    likelihood units): the float64 gradient's rounding alone leaves a decrement of about
    ``eps**2`` times the deviance (times the design's conditioning), which exceeds ``tol`` once
    the deviance passes ~1e20 (Poisson outcomes in the 1e22s, where the decrement stalls at
    ~1e-6 and Newton would never stop)."""
    size = abs(lam2)
    dev = abs(deviance) / phi
    return size <= max(tol * scale, DECREMENT_ROUNDING * dev) and size <= tol * (dev + 0.1 * scale)


def deviance_scale(e: Evaluation, phi: float) -> float:
    """``min(1, deviance / phi)`` at the starting point ``e`` (floored at 1e-300): the scale
    below which :func:`decrement_small`'s bounds follow the response's own scale."""
    dev = abs(float(e.deviance)) / phi if np.isfinite(e.deviance) and phi > 0 else 1.0
    return float(min(1.0, max(dev, 1e-300)))


def warn_not_converged(solver: str, message: str) -> None:
    warnings.warn(f"{solver} did not converge: {message}", ConvergenceWarning, stacklevel=4)
