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

__all__ = ["ConvergenceWarning", "Evaluation", "Objective", "SolverResult", "IterationLog", "decrement_small"]


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


def decrement_small(lam2: float, deviance: float, phi: float, tol: float) -> bool:
    """Newton's stopping rule: the decrement (the deviance still to gain, in likelihood units)
    is below ``tol`` both absolutely and relative to the deviance."""
    return lam2 <= tol and lam2 <= tol * (abs(deviance) / phi + 0.1)


def warn_not_converged(solver: str, message: str) -> None:
    warnings.warn(f"{solver} did not converge: {message}", ConvergenceWarning, stacklevel=4)
