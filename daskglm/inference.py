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

__all__ = ["COV_TYPES", "normalize_cov_type", "covariance"]

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
    A = -0.5 * (hess + hess.T)
    try:
        c = linalg.cho_factor(A)
        return linalg.cho_solve(c, np.eye(A.shape[0]))
    except linalg.LinAlgError as err:
        raise np.linalg.LinAlgError(
            "the observed information is not positive definite at the estimates, so standard "
            "errors are not defined (is the model identified? is there separation?)"
        ) from err


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
) -> np.ndarray:
    """The covariance of all parameters (beta and any extra ones) for ``cov_type``."""
    B = _inverse_information(hess)
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
