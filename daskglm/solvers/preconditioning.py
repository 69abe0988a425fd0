"""Diagonal preconditioning for the gradient-only solvers, fixed once before the first iteration.

The gradient solvers work in *centred, curvature-scaled* coordinates. From the Hessian ``H0``
at the starting values (the same pass that evaluates the start, so it costs nothing extra):

* **centring**: with an intercept, every coefficient's covariate is centred on its
  curvature-weighted mean ``m_j = H0[0, j] / H0[0, 0]``, i.e. ``beta = T theta`` with
  ``beta_0 = theta_0 - sum_j m_j theta_j`` and ``beta_j = theta_j``. This removes the strong
  intercept-covariate coupling that makes plain gradient descent crawl;
* **scaling**: ``D = -diag(T' H0 T)`` (floored to stay positive), the Jacobi preconditioner.

Both maps are elementwise or a single dot product: no matrix solve, inverse or factorisation.
In the scaled coordinates ``z = D^(1/2) theta`` the curvature has a unit diagonal, so
``g_theta' D^-1 g_theta`` estimates the Newton decrement (the deviance still to be gained) and is
what the stopping rule uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Preconditioner", "GradientStop"]


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


@dataclass
class GradientStop:
    """The stopping rule shared by the gradient solvers.

    Converged when both the estimated decrement (deviance still to gain, in likelihood units)
    and the relative change of the log-likelihood over the last iteration are at most ``tol``.
    """

    tol: float
    pre: Preconditioner

    def check(self, ll_prev: float, ll: float, grad: np.ndarray, phi: float) -> tuple[bool, float, float]:
        """Return ``(converged, decrement, relative_change)``."""
        dec = self.pre.decrement(grad) / phi
        rel = abs(ll - ll_prev) / phi / (abs(ll) / phi + 1.0)
        return bool(dec <= self.tol and rel <= self.tol), dec, rel

    def message(self, dec: float, rel: float) -> str:
        """How convergence was met, for the result."""
        return f"decrement {dec:.3g} and relative LL change {rel:.3g} <= tol={self.tol:g}"
