"""Newton-Raphson whose steps ``(-H)^-1 g`` come from Newton-Schulz iterations: inverse-free.

Each iteration evaluates the log-likelihood, gradient and Hessian in one pass, as
:func:`~daskglm.solvers.newton.newton` does, but never solves, inverts or factorises a matrix:
the inverse of the equilibrated curvature ``C = D^-1/2 T' (-H) T D^-1/2`` (centred on the
intercept and scaled to a unit diagonal, :class:`~.preconditioning.Preconditioner`) comes from
``X_{k+1} = X_k (2I - C X_k)`` (:func:`~.preconditioning.newton_schulz_inverse`), warm-started
from the previous iteration's ``X``. Only matrix products, additions and elementwise scalings
are used, so the solver stays usable where only additions and multiplications exist
(homomorphic encryption, secure aggregation). The step ``T D^-1/2 X D^-1/2 T' g`` is taken with
step halving, and the fit stops on the Newton decrement ``g' (-H)^-1 g`` as Newton's does (then
takes the final step), so it converges quadratically.

Cost per iteration
------------------
* **passes**: one (LL, gradient and Hessian together), plus one per step halving; for the
  Gaussian, where a float64 gradient's rounding would move the estimates, one more at the end
  for the last step's double-double gradient;
* **client**: ``O(P^2)`` for the equilibration and the step; the Newton-Schulz iteration makes
  two P x P products per update (``C X`` and ``X R``) plus one to check the warm start.
  Warm-started from the previous iteration's inverse, when the Hessian has changed by a
  relative ``delta`` it needs about ``log2(log(eps) / log(delta))`` updates: 2 to 4 near the
  optimum, i.e. 5 to 9 products. A cold start (the first iteration, or when the warm start is
  too far: ``||I - C X||_F >= 1``) starts from ``I / ||C||_inf`` and needs about
  ``log2(P cond(C)) + 6`` updates (30 to 60 products for a condition number of 1e6).
  Where ``-H`` is not positive definite the iteration diverges, which detects it; ``C + mu I``
  with the smallest working ``mu`` in ``1e-8, 1e-7, ...`` is used (Levenberg-Marquardt damping)
  and convergence is not declared from a damped step.
* **ill-conditioned Gaussian fits**: where that iteration needs a damping or stops above a
  residual of 1e-6 (its floor is about ``cond(C) eps``: NIST's Filip, 1.5e19, has no correct
  digit in float64), one more pass sums the Hessian in double-double (once: it does not depend
  on the parameters) and ``C^-1/2`` comes from the coupled Newton-Schulz iteration in
  double-double arithmetic (three double-double P x P products per update, about 20 float64
  flops each; 62 updates on Filip, ``P = 11``: 20 ms), applied as two products (``C^-1``
  rounded to float64 would have entries of 1e18). The next iterations reuse it while the
  Hessian is unchanged (``accurate_hessian`` in the history).

The history records ``ns_iterations``, ``ns_products``, ``ns_residual`` (``||I - C X||_F``) and
``damping`` per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import (
    Evaluation,
    IterationLog,
    Objective,
    SolverResult,
    decrement_small,
    deviance_scale,
    warn_not_converged,
)
from .preconditioning import (
    NS_MAX_ITER,
    NS_TOL,
    Preconditioner,
    accurate_evaluator,
    accurate_inverse,
    damped_inverse,
    needs_accurate_hessian,
    newton_schulz_inverse,
)

__all__ = ["NewtonSchulzConfig", "newton_schulz"]


@dataclass(frozen=True)
class NewtonSchulzConfig:
    """Settings of :func:`newton_schulz`.

    Attributes
    ----------
    tol : float
        Convergence threshold on the Newton decrement (absolute and relative to the deviance),
        as for :class:`~daskglm.solvers.newton.NewtonConfig`.
    max_iter : int
        Most iterations (each at least one pass over the data).
    max_halvings : int
        Most step halvings within one iteration.
    ns_tol : float
        The Newton-Schulz iteration stops when ``||I - C X||_F`` is below this, or when it
        stops falling (its rounding floor, about ``cond(C) * eps``).
    ns_max_iter : int
        Most Newton-Schulz updates per Newton iteration.
    """

    tol: float = 1e-8
    max_iter: int = 100
    max_halvings: int = 30
    ns_tol: float = NS_TOL
    ns_max_iter: int = NS_MAX_ITER

    def __post_init__(self):
        checks = [
            ("tol", self.tol > 0, "> 0"),
            ("max_iter", int(self.max_iter) >= 1, ">= 1"),
            ("max_halvings", int(self.max_halvings) >= 0, ">= 0"),
            ("ns_tol", 0 < self.ns_tol < 1, "in (0, 1)"),
            ("ns_max_iter", int(self.ns_max_iter) >= 1, ">= 1"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: it must be {what}")


class _Inverse:
    """The equilibration and the Newton-Schulz inverse, carried from iteration to iteration."""

    def __init__(self, objective: Objective, config: NewtonSchulzConfig):
        self.objective = objective
        self.config = config
        self.eq: Preconditioner | None = None
        self.X: np.ndarray | None = None
        #: ``C^-1/2`` when the inverse came from the double-double Hessian (applied as two
        #: products, :meth:`Preconditioner.from_equilibrated_root`), else None
        self.root: np.ndarray | None = None
        self.hess: np.ndarray | None = None

    def step(self, grad: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, dict]:
        """``(-H)^-1 g`` (damped if needed) and the iteration's Newton-Schulz figures."""
        cfg = self.config
        products = 0
        r = None
        if self.root is not None and np.array_equal(hess, self.hess):
            # the Gaussian's Hessian does not depend on the parameters: same inverse
            info = {"ns_iterations": 0, "ns_products": 0, "ns_residual": self.residual}
            info.update(ns_warm=True, damping=0.0, accurate_hessian=True)
            return self.apply(grad), info
        self.root = None
        if self.eq is not None and self.X is not None:
            r = newton_schulz_inverse(
                self.eq.equilibrate(hess), self.X, tol=cfg.ns_tol, max_iter=cfg.ns_max_iter, warm_only=True
            )
            products += r.products
        mu = 0.0
        if r is None or not r.converged:
            # cold start, equilibrated at this Hessian
            ob = self.objective
            self.eq = Preconditioner.from_hessian(hess, ob.intercept_index, ob.n_beta)
            r, mu, more = damped_inverse(self.eq.equilibrate(hess), tol=cfg.ns_tol, max_iter=cfg.ns_max_iter)
            products += more
            accurate = getattr(ob, "accurate_hessian", None)
            if accurate is not None and needs_accurate_hessian(r, mu):
                # the float64 Hessian has no correct digits in its smallest directions
                dd = accurate()
                built = (
                    accurate_inverse(dd, ob.intercept_index, ob.n_beta, sqrt=True) if dd is not None else None
                )
                if built is not None:
                    self.eq, ra = built
                    self.root, self.hess, self.X, self.residual = ra.X, np.array(hess), None, ra.residual
                    info = {"ns_iterations": ra.iterations, "ns_products": products + ra.products}
                    info.update(ns_residual=ra.residual, ns_warm=False, damping=0.0, accurate_hessian=True)
                    return self.apply(grad), info
        self.X = r.X if mu == 0.0 else None
        info = {
            "ns_iterations": r.iterations,
            "ns_products": products,
            "ns_residual": r.residual,
            "ns_warm": r.warm,
            "damping": mu,
        }
        return self.eq.from_equilibrated(r.X, grad), info

    def apply(self, grad: np.ndarray) -> np.ndarray:
        """``(-H)^-1 g`` with the last undamped inverse (after :meth:`step`)."""
        if self.root is not None:
            return self.eq.from_equilibrated_root(self.root, grad)
        return self.eq.from_equilibrated(self.X, grad)


def _final_step(
    objective: Objective, inverse: _Inverse, e: Evaluation, step: np.ndarray, row: dict
) -> np.ndarray:
    """The last step ``(-H)^-1 g`` from the evaluation ``e``: with the gradient recomputed in
    double-double where a float64 gradient's rounding could move the estimates by more than
    1e-10 relative and the objective offers it (``accurate_evaluation``: the Gaussian, one
    more pass; :func:`~.preconditioning.accurate_evaluator`, :mod:`daskglm.kernels.accurate`), else
    ``step`` as it is. Newton's own last step uses an extended-precision gradient there too
    (its QR pass); a float64 one leaves the estimates up to 5e-6 off on NIST's Wampler5.
    Records ``accurate_gradient`` in ``row``."""
    accurate = accurate_evaluator(objective, e, inverse.apply)
    ea = accurate(e.params) if accurate is not None else None
    row["accurate_gradient"] = ea is not None and bool(np.all(np.isfinite(ea.grad)))
    return inverse.apply(ea.grad) if row["accurate_gradient"] else step


def newton_schulz(
    objective: Objective,
    start: np.ndarray,
    config: NewtonSchulzConfig = NewtonSchulzConfig(),
    callback=None,
) -> SolverResult:
    """Maximise the objective by inverse-free Newton-Raphson from ``start`` (module docstring)."""
    log = IterationLog(objective, callback)
    x = np.asarray(start, dtype=np.float64).copy()
    e = objective(x, hessian=True)
    if not (np.isfinite(e.ll) and np.all(np.isfinite(e.grad)) and np.all(np.isfinite(e.hess))):
        raise FloatingPointError(
            "the log-likelihood or its derivatives are not finite at the starting values; "
            "check the data's scale or pass start_params"
        )
    log.add(0, e, 0.0, decrement=np.nan)
    scale = deviance_scale(e, objective.dispersion(e))
    inverse = _Inverse(objective, config)
    message = f"reached max_iter={config.max_iter} iterations"
    converged = False
    it = 0
    for it in range(1, config.max_iter + 1):
        step, info = inverse.step(e.grad, e.hess)
        damped = info["damping"] > 0
        phi = objective.dispersion(e)
        lam2 = float(e.grad @ step) / phi
        if decrement_small(lam2, e.deviance, phi, config.tol, scale) and not damped:
            x = x + _final_step(objective, inverse, e, step, log.rows[-1])
            converged = True
            message = f"Newton decrement {lam2:.3g} <= tol={config.tol:g}"
            log.rows[-1]["decrement"] = lam2
            break
        t = 1.0
        for _ in range(config.max_halvings + 1):
            trial = objective(x + t * step, hessian=True)
            if (
                np.isfinite(trial.ll)
                and np.all(np.isfinite(trial.hess))
                and trial.ll >= e.ll - 1e-12 * (abs(e.ll) + 1.0)
            ):
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
        log.add(it, e, t, decrement=lam2, **info)
    if not converged:
        warn_not_converged("Newton-Schulz", message)
    return SolverResult(x, converged, it, log.rows, message, "newton_schulz")
