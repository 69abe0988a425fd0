"""NIST StRD linear regressions through the public API, against NIST's certified values.

Source: NIST/ITL Statistical Reference Datasets, linear least squares,
https://www.itl.nist.gov/div898/strd/lls/lls.shtml (Norris, Pontius, NoInt1, NoInt2, Filip,
Wampler1-5). The data and certified values are read from the project's shared reference folder
(``../shared/reference/nist-strd``: CSV with NIST's printed tokens, JSON with the certified
values; see the README there); the tests skip when it is absent.

Each data set is fitted by ``dg.fit`` as a Gaussian model on a 1-D cross-section with covariates
``x, x^2, ...`` as NIST's model prescribes (NoInt1/NoInt2 without an intercept). Accuracy is the
log relative error (McCullough 1998): ``LRE = -log10(|est - cert| / |cert|)`` (log absolute error
when cert = 0), capped at 15, minimum over the coefficients. Required: 9 digits for the
lower-difficulty sets and NoInt1/2, 6 for Wampler1-5 and Filip, for the estimates and the
standard errors. Filip's Gram matrix has condition 3e16 after scaling: no normal-equations
solve has a correct digit, and the fit goes through the tall-skinny QR route of
:mod:`daskglm.kernels.qr`. The achieved digits are printed (``pytest -s``) and recorded as properties.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import daskglm as dg

NIST = Path(
    os.environ.get(
        "DASKGLM_NIST_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "nist-strd"
    )
)
if not NIST.is_dir():
    NIST = Path("/work/shared/reference/nist-strd")

REQUIRED = {
    "Norris": 9,
    "Pontius": 9,
    "NoInt1": 9,
    "NoInt2": 9,
    "Filip": 6,
    "Wampler1": 6,
    "Wampler2": 6,
    "Wampler3": 6,
    "Wampler4": 6,
    "Wampler5": 6,
}

pytestmark = pytest.mark.skipif(not NIST.is_dir(), reason=f"NIST StRD reference data not found at {NIST}")


def load(name: str) -> tuple[xr.Dataset, list[str], dict]:
    """The data set as a 1-D panel with covariates x1 = x, x2 = x^2, ... and its JSON record."""
    meta = json.loads((NIST / f"{name}.json").read_text())
    df = pd.read_csv(NIST / f"{name}.csv", dtype=str)
    x = df["x"].astype(float).to_numpy()
    ds = xr.Dataset({"y": ("obs", df["y"].astype(float).to_numpy())})
    names = []
    for p in meta["powers"]:
        if p > 0:
            ds[f"x{p}"] = ("obs", x**p)
            names.append(f"x{p}")
    return ds, names, meta


def lre(est, cert) -> float:
    """Minimum log relative error over the values (log absolute error where cert = 0)."""
    est, cert = np.asarray(est, float), np.asarray(cert, float)
    err = np.where(cert == 0, np.abs(est - cert), np.abs(est - cert) / np.where(cert == 0, 1.0, np.abs(cert)))
    with np.errstate(divide="ignore"):
        digits = np.where(err == 0, 15.0, -np.log10(err))
    return float(np.clip(digits, 0.0, 15.0).min())


def nist_digits(name: str, **fit_options) -> dict[str, float]:
    """Fit ``name`` through ``dg.fit`` and return the LREs of estimates, SEs and residual SD."""
    ds, names, meta = load(name)
    res = dg.fit(ds, "y", names, "gaussian", intercept=meta["intercept"], progress=False, **fit_options)
    cert = meta["certified"]
    est = [p["estimate"]["value"] for p in cert["parameters"]]
    sd = [p["standard_deviation"]["value"] for p in cert["parameters"]]
    return {
        "estimates": lre(res.params.to_numpy(), est),
        "std_errors": lre(res.bse.to_numpy(), sd),
        "residual_sd": lre(np.sqrt(res.scale), cert["residual_standard_deviation"]["value"]),
        "converged": res.converged,
    }


@pytest.mark.parametrize("name", list(REQUIRED))
def test_nist_certified_values(name, record_property):
    # the Gaussian QR pass sums X'r in double-double (daskglm.kernels.double_double), not in
    # numpy.longdouble: the same digits on Windows and Apple silicon as on x86-64 Linux
    digits = nist_digits(name)
    print(
        f"\nNIST {name}: estimates {digits['estimates']:.1f} digits, standard errors "
        f"{digits['std_errors']:.1f}, residual SD {digits['residual_sd']:.1f} (required {REQUIRED[name]})"
    )
    for key in ("estimates", "std_errors", "residual_sd"):
        record_property(f"{name}_{key}_lre", round(digits[key], 2))
    assert digits["converged"]
    assert digits["estimates"] >= REQUIRED[name], digits
    assert digits["std_errors"] >= REQUIRED[name], digits
    assert digits["residual_sd"] >= REQUIRED[name], digits


@pytest.mark.parametrize("name", ["Filip", "Wampler5", "Pontius"])
def test_nist_chunked(name):
    """The QR factor and the extended-precision gradient are combined across chunks (a tree
    of R factors), with the same accuracy."""
    digits = nist_digits(name, chunks=7)
    assert digits["estimates"] >= REQUIRED[name], digits
    assert digits["std_errors"] >= REQUIRED[name], digits


def test_filip_is_not_refused_as_collinear():
    """Filip's Gram matrix is numerically singular; the R factor of the setup's QR pass shows
    the design is of full rank (its scaled singular values reach 3e-10, not 1e-16)."""
    ds, names, _ = load("Filip")
    res = dg.fit(ds, "y", names, "gaussian", progress=False, cov_type=None)
    assert res.converged
    ds["x11"] = 2.0 * ds["x3"] - ds["x1"]  # a true dependence is still named
    with pytest.raises(dg.DataError, match=r"collinear.*x11 = -1 \* x1 \+ 2 \* x3"):
        dg.fit(ds, "y", names + ["x11"], "gaussian", progress=False)


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_exact_fit_reports_infinite_likelihood(solver):
    """Wampler1 is an exact polynomial (y = 1 + x + ... + x^5): every solver lands on the
    certified coefficients and every residual is 0. The Gaussian log-likelihood
    ``-n/2 (log(2 pi SSR/n) + 1)`` is then +inf, as statsmodels' OLS reports for a perfect fit
    (checked below on a constant response), but quietly: no RuntimeWarning from log(0), and
    ``aic``/``bic`` (-inf), ``summary()`` and the iteration history do not raise."""
    import warnings

    import statsmodels.api as sm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # statsmodels' own log(0)
        assert sm.OLS(np.full(4, 3.0), np.ones((4, 1))).fit().llf == np.inf
    ds, names, meta = load("Wampler1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = dg.fit(ds, "y", names, "gaussian", solver=solver, progress=False)
        assert res.deviance == 0.0 and res.scale == 0.0
        assert res.llf == np.inf
        assert res.aic == -np.inf and res.bic == -np.inf
        assert np.isfinite(res.llnull) and res.llnull < 0
        text = res.summary()
    assert "Log-likelihood: inf" in text
    np.testing.assert_array_equal(res.params.to_numpy(), np.ones(6))
    assert res.history["ll"].notna().all()  # inf where an iterate fits exactly


@pytest.mark.parametrize("chunks", [None, 5])
def test_qr_gradient_is_double_double(chunks):
    """The Gaussian ``"newton"`` QR pass's gradient ``X' (y - X b)`` on Wampler5 near the
    certified estimates (terms up to 3e6 * 2e7, cancelling to a small sum) against exact
    rational arithmetic on the same float64 inputs: within ``1e-15`` of the exact value plus
    ``1e-28`` of the terms' ``|X|' |r|``. A float64 sum errs by about ``1e-16`` of the terms
    (and so did ``numpy.longdouble`` on Windows and Apple silicon); double-double does not
    depend on the platform."""
    from fractions import Fraction

    import dask

    from daskglm.frontend.objective import run_setup
    from daskglm.frontend.panel import build_panel
    from daskglm.graph import passes as graph
    from daskglm.graph.qr import qr_graph
    from daskglm.kernels.qr import qr_grad_size, qr_unpack, qr_width

    ds, names, meta = load("Wampler5")
    panel = build_panel(ds, "y", names, dg.Gaussian(), chunks=chunks)
    layout = run_setup(panel, graph.PassCounter()).layout
    cert = np.array([p["estimate"]["value"] for p in meta["certified"]["parameters"]], dtype=float)
    order = [layout.param_names.index(n) for n in ["Intercept", *names]]
    beta = np.zeros(layout.n_params)
    beta[order] = cert * (1 + 1e-9 * np.arange(1, cert.size + 1))  # near, not at, the optimum
    assert len(panel.arrays[0].chunks[0]) == (5 if chunks else 1)  # chunks combined in a tree
    (vec,) = dask.compute(qr_graph(layout, panel.arrays, beta, "newton"))
    grad = qr_unpack(vec, qr_width(layout, "newton"), qr_grad_size(layout, "newton")).grad
    X = np.column_stack([np.ones(ds.sizes["obs"])] + [ds[n].to_numpy() for n in names])[:, np.argsort(order)]
    y = ds["y"].to_numpy()
    r = [
        Fraction(yi) - sum(Fraction(a) * Fraction(b) for a, b in zip(row, beta, strict=True))
        for row, yi in zip(X.tolist(), y.tolist(), strict=True)
    ]
    exact = np.array(
        [
            float(sum(Fraction(row[j]) * ri for row, ri in zip(X.tolist(), r, strict=True)))
            for j in range(X.shape[1])
        ]
    )
    terms = np.abs(X).T @ np.abs(np.array([float(v) for v in r]))
    float64 = X.T @ (y - X @ beta)
    assert np.all(np.abs(grad - exact) <= 1e-15 * np.abs(exact) + 1e-28 * terms), (grad, exact)
    assert np.any(np.abs(float64 - exact) > 1e3 * np.abs(grad - exact))  # float64 would not do


def test_qr_route_with_a_one_cell_chunk():
    """Filip's 82 rows in chunks of 27 leave a last chunk of one cell, where every block's axis
    has length 1: the QR passes (setup and Newton) gathered its design rows with the wrong
    shape and the fit raised; now the same digits as unchunked."""
    digits = nist_digits("Filip", chunks=27)
    assert digits["converged"]
    assert digits["estimates"] >= REQUIRED["Filip"], digits
    assert digits["std_errors"] >= REQUIRED["Filip"], digits
