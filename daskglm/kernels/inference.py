"""Covariance matrices of the estimates: observed information, sandwich, cluster-robust.

Pure numpy. Conventions follow statsmodels' GLM:

* ``nonrobust``: ``(-H)^{-1}`` times the scale (Gaussian: ``SSR / df_resid``; else 1);
* ``HC0`` (= ``"robust"``): ``B M B`` with ``B = (-H)^{-1}`` and ``M = sum w s s'``;
* ``HC1``: ``HC0 * n / (n - k)``;
* ``cluster``: ``B M_c B * G/(G-1) * (n-1)/(n-k)`` with ``M_c = sum_c s_c s_c'``.

``n`` is the sum of the frequency weights, ``k`` the number of estimated parameters, ``G``
the number of non-empty clusters.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from ..solvers.newton import REFINE_COND, equilibrated_cholesky

__all__ = ["COV_TYPES", "normalize_cov_type", "covariance", "inverse_information_qr"]

#: accepted ``cov_type`` values and what they mean
COV_TYPES = {
    "nonrobust": "inverse observed information (times the scale for the Gaussian)",
    "robust": "sandwich, same as HC0",
    "HC0": "sandwich B M B, no small-sample factor",
    "HC1": "sandwich times n / (n - k)",
    "cluster": "cluster-robust sandwich over the panel dims named in cluster=",
}


def normalize_cov_type(cov_type: str | None) -> str | None:
    """Check ``cov_type`` and map aliases (``"robust"`` -> ``"HC0"``)."""
    if cov_type is None:
        return None
    lookup = {k.lower(): k for k in COV_TYPES}
    key = lookup.get(str(cov_type).lower())
    if key is None:
        raise ValueError(
            f"cov_type={cov_type!r} is not supported; use one of {', '.join(map(repr, COV_TYPES))}"
            " or None to skip standard errors"
        )
    return "HC0" if key == "robust" else key


def _inverse_information(hess: np.ndarray) -> np.ndarray:
    """``(-H)^{-1}`` by Cholesky of the equilibrated matrix ``S (-H) S`` (``S`` scales to unit
    diagonal, so the units of the covariates do not matter), refined by one Newton-Schulz step
    ``B + B (I - A B)`` when the equilibrated condition number is large."""
    A = -0.5 * (hess + hess.T)
    try:
        c, s, rcond = equilibrated_cholesky(A)
    except (linalg.LinAlgError, ValueError) as err:
        raise np.linalg.LinAlgError(
            "the observed information is not positive definite at the estimates, so standard "
            "errors are not defined (is the model identified? is there separation?)"
        ) from err
    As = A * s[:, None] * s[None, :]
    Bs = linalg.cho_solve(c, np.eye(A.shape[0]), check_finite=False)
    if rcond < 1.0 / REFINE_COND:
        Bs = Bs + Bs @ (np.eye(A.shape[0]) - As @ Bs)
    Bs = 0.5 * (Bs + Bs.T)
    return Bs * s[:, None] * s[None, :]


def inverse_information_qr(r_factor: np.ndarray, hess: np.ndarray) -> np.ndarray:
    """``(-H)^{-1}`` from the R factor of the QR of ``sqrt(W) X`` (``R'R = X' W X``, the
    coefficients' block of ``-H``), without forming or factorising ``R'R``.

    Error about ``cond(R) * eps`` instead of ``cond(R)^2 * eps``: what makes standard errors
    of designs like NIST's Filip (``cond(R)`` about 1e8 after scaling) correct to 7 digits or
    more where the inverse Gram matrix has none. An extra parameter (NB2's log-alpha, the last
    row/column of ``hess``) enters through its Schur complement
    ``c - b' (R'R)^{-1} b = c - |R^{-T} b|^2``.
    """
    R = np.asarray(r_factor, dtype=np.float64)
    nb = R.shape[0]
    A = -0.5 * (hess + hess.T)
    if not np.all(np.isfinite(R)) or np.any(np.diag(R) == 0):
        raise np.linalg.LinAlgError(
            "the R factor of the weighted design is singular at the estimates, so standard "
            "errors are not defined (is the model identified?)"
        )
    Rinv = linalg.solve_triangular(R, np.eye(nb))
    B = np.zeros_like(A)
    B[:nb, :nb] = Rinv @ Rinv.T
    if A.shape[0] > nb:
        b, c = A[:nb, nb:], A[nb:, nb:]
        u = linalg.solve_triangular(R, b, trans="T")
        schur = c - u.T @ u
        try:
            S = np.linalg.inv(schur)
        except np.linalg.LinAlgError as err:
            raise np.linalg.LinAlgError("the observed information is singular at the estimates") from err
        v = Rinv @ u  # (R'R)^{-1} b
        B[:nb, :nb] += v @ S @ v.T
        B[:nb, nb:] = -v @ S
        B[nb:, :nb] = B[:nb, nb:].T
        B[nb:, nb:] = S
    return B


def covariance(
    hess: np.ndarray,
    cov_type: str,
    *,
    scale: float = 1.0,
    meat: np.ndarray | None = None,
    cluster_meat: np.ndarray | None = None,
    n_clusters: int | None = None,
    nobs: float,
    k: int,
    r_factor: np.ndarray | None = None,
) -> np.ndarray:
    """The covariance of all parameters (beta and any extra ones) for ``cov_type``.

    ``r_factor``: the R factor of the QR of ``sqrt(W) X`` at the estimates, when the fit
    computed one (ill-conditioned designs); the inverse information then comes from it
    (:func:`inverse_information_qr`) rather than from ``hess``.
    """
    B = _inverse_information(hess) if r_factor is None else inverse_information_qr(r_factor, hess)
    if cov_type == "nonrobust":
        return B * scale
    if cov_type in ("HC0", "HC1"):
        V = B @ meat @ B
        return V * (nobs / (nobs - k)) if cov_type == "HC1" else V
    if cov_type == "cluster":
        G = n_clusters
        if G is None or G < 2:
            raise ValueError(f"cluster-robust standard errors need at least 2 clusters, got {G}")
        factor = G / (G - 1) * (nobs - 1) / (nobs - k)
        return B @ cluster_meat @ B * factor
    raise ValueError(f"unknown cov_type {cov_type!r}")
