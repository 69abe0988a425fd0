"""Fixed-effects models for the gradient-only solvers: every effect level is a parameter.

Front-end layer beside :mod:`daskglm.frontend.fixed_effects`. ``lbfgs`` and ``gd`` run on the
full parameter vector ``[beta, extra, a_1.ravel(), ..., a_E.ravel()]``; each function call is one
evaluation pass (``hessian=False``) that spreads the effects onto the cells, adds them to
``X beta`` and returns the log-likelihood, the covariates' gradient and every effect's gradient
(``w g`` reduced onto its grid) together.

A dense Hessian over millions of levels cannot be formed, so the objective builds the solvers'
preconditioner itself (:meth:`FixedEffectsGradientObjective.preconditioner`, called where a
gradient solver would turn the Hessian into its full-matrix preconditioner): a change of
variables ``params = R u`` with

* levels: ``a = diag(s) u_a - Z beta``, ``s = (diag A)^-1/2`` (Jacobi: unit curvature for every
  level; 0 for levels without a used cell, which stay where they are) and ``Z = A^+ B`` the
  effects' projection of the covariates (each covariate centred on the effects, as the
  intercept-centring of :class:`~daskglm.solvers.preconditioning.Preconditioner` centres a
  covariate on the intercept);
* covariates: ``beta = R_c u_c`` with ``R_c`` the full-matrix preconditioner
  (:class:`~daskglm.solvers.preconditioning.MatrixPreconditioner`) of the concentrated
  information ``S = C - B' A^+ B``.

At the point it is built the covariates are then exactly decoupled from the levels (``A Z =
B``) and have unit curvature; the levels' block is ``diag(s) A diag(s)``: unit diagonal, its
eigenvalues between 0 (the effects' normalisation, along which the gradient is exactly 0) and
the number of effects. ``Z`` and ``S`` come from the same block conjugate-gradient solve the
Newton path uses (products with the kept ``W = -w h``, no pass over the data); the first build
also decides which covariates are absorbed, as Newton's first step does. Standard errors come
from :meth:`FixedEffectsObjective.final`, as after a Newton fit.
"""

from __future__ import annotations

import numpy as np

from ..solvers.base import Evaluation
from ..solvers.preconditioning import MatrixPreconditioner
from .fixed_effects import INNER_RTOL, FixedEffectsObjective

__all__ = ["EffectsPreconditioner", "FixedEffectsGradientObjective", "REBUILD_RTOL"]

#: relative residual of the inner solve when the preconditioner is rebuilt (warm-started from
#: the previous projections; a preconditioner need not be exact: on a thin 3-effect panel,
#: 1e-6 took 35% fewer products than 1e-8 for the same evaluations and estimates)
REBUILD_RTOL = 1e-6


class EffectsPreconditioner:
    """``params = R u`` for a model with fixed effects (see the module docstring).

    Has the interface of :class:`~daskglm.solvers.preconditioning.MatrixPreconditioner` that the
    gradient solvers use: ``to_theta`` (``R' g``), ``to_beta`` (``R u``), ``direction``
    (``R R' g``), ``decrement`` (``g' R R' g``) and a unit ``D``.

    Parameters
    ----------
    covariates : MatrixPreconditioner or None
        ``R_c`` of the active covariates' concentrated information (None when none is active).
    active : ndarray of bool, shape (n_small,)
        Covariates (and extra parameters) still estimated; the others never move.
    Z : ndarray, shape (n_levels, n_small)
        The effects' projection of the covariates, all effects' levels stacked (flat).
    s : ndarray, shape (n_levels,)
        ``(diag A)^-1/2``; 0 where a level has no used cell.
    """

    def __init__(
        self, covariates: MatrixPreconditioner | None, active: np.ndarray, Z: np.ndarray, s: np.ndarray
    ):
        self.covariates = covariates
        self.active = np.asarray(active, dtype=bool)
        self.act = np.flatnonzero(self.active)
        self.Z = Z
        self.s = s
        self.n_small = self.active.size
        self.n_params = self.n_small + s.size

    @property
    def D(self) -> np.ndarray:
        """Unit curvature in the new coordinates."""
        return np.ones(self.n_params)

    def to_theta(self, grad: np.ndarray) -> np.ndarray:
        """``R' g``: ``R_c' (g_c - Z' g_a)`` on the active covariates, ``s g_a`` on the levels."""
        g = np.asarray(grad, dtype=np.float64)
        P = self.n_small
        out = np.zeros(self.n_params)
        if self.covariates is not None:
            gc = g[:P] - self.Z.T @ g[P:]
            out[self.act] = self.covariates.to_theta(gc[self.act])
        out[P:] = self.s * g[P:]
        return out

    def to_beta(self, step: np.ndarray) -> np.ndarray:
        """``R u``: ``beta = R_c u_c``, ``a = s u_a - Z beta``."""
        u = np.asarray(step, dtype=np.float64)
        P = self.n_small
        out = np.zeros(self.n_params)
        if self.covariates is not None:
            out[self.act] = self.covariates.to_beta(u[self.act])
        out[P:] = self.s * u[P:] - self.Z @ out[:P]
        return out

    def direction(self, grad: np.ndarray) -> np.ndarray:
        """``R R' g``: a Newton step for the covariates, a Jacobi step for the levels."""
        return self.to_beta(self.to_theta(grad))

    def decrement(self, grad: np.ndarray) -> float:
        """``g' R R' g``: the estimated deviance still to gain (likelihood units)."""
        t = self.to_theta(grad)
        return float(t @ t)


class FixedEffectsGradientObjective(FixedEffectsObjective):
    """The objective of a fixed-effects model for the gradient-only solvers.

    The same parameters, passes, level drops, absorbed covariates and inference as
    :class:`~daskglm.frontend.fixed_effects.FixedEffectsObjective` (which Newton uses through its
    concentrated :meth:`direction`); what the gradient solvers need in addition is
    :meth:`preconditioner`. A call with ``hessian=False`` is one evaluation pass returning the
    log-likelihood and the gradient of every parameter; with ``hessian=True`` (at the start and
    when a solver rebuilds its preconditioner) the pass also gives the effects' diagonals and
    cross blocks and keeps ``W`` for the inner products.
    """

    def preconditioner(self, e: Evaluation) -> EffectsPreconditioner:
        """The change of variables at an evaluation made with the Hessian (module docstring).

        The first build solves tightly and decides absorbed covariates (as Newton's first step);
        rebuilds start from the previous projections and solve to :data:`REBUILD_RTOL`.
        Costs the inner solve's products over the kept ``W`` and one more for ``S``.
        """
        st = self._stats(e.params)
        first = not self._checked
        Z = self._solve(st, list(st["cross_fe"]), INNER_RTOL if first else REBUILD_RTOL)
        S = self._concentrated(st, Z)
        if first:
            self._checked = True
            self._check_absorbed(S, -st["hess"])
        P = self.n_small
        act = np.flatnonzero(self.active)
        cov = MatrixPreconditioner.from_hessian(-S[np.ix_(act, act)], None, act.size) if act.size else None
        Zflat = np.concatenate([z.reshape(-1, P) for z in Z], axis=0)
        diag = np.concatenate([d.ravel() for d in st["diag_fe"]])
        keep = np.concatenate([~d.ravel() for d in self.drops.dropped]) & (diag > 0)
        s = np.where(keep, 1.0 / np.sqrt(np.where(keep, diag, 1.0)), 0.0)
        Zflat[~keep] = 0.0
        return EffectsPreconditioner(cov, self.active, Zflat, s)
