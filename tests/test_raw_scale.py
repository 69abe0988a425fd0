"""Real data at raw scales (dollars, head counts, calendar years beside an intercept).

Data shipped with statsmodels, put in the units a user has them in:

* Grunfeld (1958) investment panel, 10 firms x 20 years (1935-1954): gross investment, market
  value and capital stock in **dollars** (the data are in millions), the calendar year as a
  covariate over the ``year`` dim only. A real 2-D panel: y over (firm, year).
* US macroeconomic quarterly data 1959-2009 (``macrodata``): real GDP in **dollars** (~1e13),
  population in **persons** (~3e8), the year, and unemployed persons out of the population as a
  binomial with trials.
* Stanford heart-transplant survival (``heart``): survival in days with censoring, age in
  **days** and its square (~3e8) beside an intercept.

The reference is statsmodels on the expanded design (``tests/helpers.py``) fitted in convenient
units (billions of dollars, millions of persons, thousands of days) and converted back: the same
model, while statsmodels' own IRLS solves through a pseudo-inverse whose cut-off depends on the
columns' scale. Tolerances are the issue's: params 1e-6 relative, standard errors 1e-5.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import statsmodels.api as sm
import xarray as xr
from helpers import statsmodels_fit

import daskglm as dg
from daskglm.api.registry import FAMILIES
from daskglm.kernels.checks import collinear_groups


@functools.cache
def grunfeld() -> xr.Dataset:
    g = sm.datasets.grunfeld.load_pandas().data

    def wide(col):
        return g.pivot(index="firm", columns="year", values=col)

    inv = wide("invest")
    years = inv.columns.to_numpy(float)
    dims = ("firm", "year")
    return xr.Dataset(
        {
            "invest": (dims, inv.to_numpy() * 1e6),  # dollars
            "invest_m": (dims, inv.to_numpy()),  # millions of dollars (a non-integer Poisson response)
            "invest_n": (dims, np.round(inv.to_numpy())),  # whole millions (counts for NB2)
            "value": (dims, wide("value").to_numpy() * 1e6),
            "capital": (dims, wide("capital").to_numpy() * 1e6),
            "yr": (("year",), years),
        },
        coords={"firm": inv.index.to_numpy().astype(str), "year": years},
    )


@functools.cache
def macro() -> xr.Dataset:
    m = sm.datasets.macrodata.load_pandas().data
    pop = np.round(m["pop"].to_numpy() * 1e6)  # persons
    return xr.Dataset(
        {
            "unemployed": ("obs", np.round(m["unemp"].to_numpy() / 100 * pop)),
            "pop": ("obs", pop),
            "gdp": ("obs", m["realgdp"].to_numpy() * 1e9),  # dollars
            "yr": ("obs", m["year"].to_numpy()),
            "realint": ("obs", m["realint"].to_numpy()),
        }
    )


@functools.cache
def heart() -> xr.Dataset:
    h = sm.datasets.heart.load_pandas().data
    age = h["age"].to_numpy() * 365.25  # days
    return xr.Dataset(
        {
            "survival": ("obs", h["survival"].to_numpy()),
            "dead": ("obs", h["censors"].to_numpy()),
            "age": ("obs", age),
            "age2": ("obs", age**2),
        }
    )


# family -> (data, y, x, daskglm family, statsmodels name, statsmodels options, unit of each x)
CASES = {
    "gaussian": (grunfeld, "invest", ["value", "capital", "yr"], dg.Gaussian(), "gaussian", {}),
    "poisson": (grunfeld, "invest_m", ["value", "capital", "yr"], dg.Poisson(), "poisson", {}),
    "negative_binomial": (
        grunfeld,
        "invest_n",
        ["value", "capital", "yr"],
        dg.NegativeBinomial(),
        "negative_binomial",
        {},
    ),
    "binomial": (
        macro,
        "unemployed",
        ["gdp", "pop", "yr", "realint"],
        dg.Binomial(trials="n"),
        "binomial",
        {"trials": "n"},
    ),
    "exponential": (
        heart,
        "survival",
        ["age", "age2"],
        dg.Exponential(event="dead"),
        "exponential",
        {"event": "dead"},
    ),
}
UNITS = {
    "value": 1e9,
    "capital": 1e9,
    "yr": 1e3,
    "realint": 1.0,
    "gdp": 1e12,
    "pop": 1e6,
    "age": 1e3,
    "age2": 1e6,
}


def test_every_family_has_a_raw_scale_case():
    assert set(CASES) == set(FAMILIES)


def reference(family: str):
    """statsmodels in convenient units, converted back to the raw units: (params, bse)."""
    data, y, x, _, smname, opts = CASES[family]
    ds = data()
    if family == "binomial":
        ds = ds.assign(n=ds["pop"])
    df = ds.to_dataframe().reset_index().rename(columns={y: "y"})
    for c in x:
        df[c] = df[c] / UNITS[c]
    ref = statsmodels_fit(smname, df, x, **opts)
    factor = np.array([1.0] + [UNITS[c] for c in x] + ([1.0] if family == "negative_binomial" else []))
    return np.asarray(ref.params) / factor, np.asarray(ref.bse) / factor


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize(
    "chunked,qr", [(False, "auto"), (True, "never"), (True, "always"), (False, "always")]
)
def test_raw_scale_matches_statsmodels(family, chunked, qr):
    """Both Newton routes: the equilibrated Hessian (``qr="never"``) and the tall-skinny QR
    steps with R-based standard errors (``qr="always"``), each also with chunks cutting the
    panel (the R factors are combined in a tree)."""
    data, y, x, fam, _, _ = CASES[family]
    ds = data()
    if family == "binomial":
        ds = ds.assign(n=ds["pop"])
    chunks = tuple(max(n // 3, 1) for n in ds[y].shape) if chunked else None
    res = dg.fit(ds, y, x, fam, chunks=chunks, progress=False, qr=qr)
    assert res.converged
    params, bse = reference(family)
    nb = len(x) + 1
    err_p = rel_err(res.params.to_numpy(), params[:nb])
    err_se = rel_err(res.bse.to_numpy(), bse[:nb])
    print(
        f"{family} (chunked={chunked}, qr={qr}): params {err_p:.2g}, SEs {err_se:.2g} relative to statsmodels"
    )
    assert err_p <= 1e-6, f"params differ by {err_p:.3g} relative"
    assert err_se <= 1e-5, f"standard errors differ by {err_se:.3g} relative"
    if family == "negative_binomial":
        assert rel_err(res.alpha, params[-1]) <= 1e-6
        assert rel_err(res.alpha_bse, bse[-1]) <= 1e-5


def test_raw_scale_gram_is_not_collinear():
    """The defect of issue 13: GDP in dollars made the intercept and the year look like zero
    columns when each Gram diagonal was compared with the largest one."""
    ds = macro()
    X = np.column_stack([np.ones(ds.sizes["obs"])] + [ds[c].to_numpy() for c in ("gdp", "pop", "yr")])
    gram = X.T @ X
    names = ["Intercept", "gdp", "pop", "yr"]
    assert gram[3, 3] / gram[1, 1] < 1e-11  # what the old check took for a zero column
    assert collinear_groups(gram, names, intercept=0) == []


def test_raw_scale_true_dependencies_still_named():
    ds = grunfeld().copy()
    ds["value_bn"] = ds["value"] / 1e9 + 2.0  # the same covariate in billions, shifted
    ds["since_1900"] = ds["yr"] - 1900.0  # the year again, counted from 1900
    with pytest.raises(dg.DataError, match=r"collinear") as err:
        dg.fit(ds, "invest", ["value", "capital", "yr", "value_bn", "since_1900"], progress=False)
    msg = str(err.value)
    assert "value_bn = 1e-09 * value + 2 * Intercept" in msg
    assert "since_1900 = 1 * yr - 1900 * Intercept" in msg


def test_raw_scale_constant_column_named():
    ds = macro().assign(cpi_base=("obs", np.full(macro().sizes["obs"], 2.5e11)))
    with pytest.raises(dg.DataError, match=r"collinear.*cpi_base = 2\.5e\+11 \* Intercept"):
        dg.fit(ds, "unemployed", ["gdp", "yr", "cpi_base"], dg.Binomial(trials="pop"), progress=False)


@pytest.mark.parametrize("qr", ["auto", "never"])
def test_calendar_year_and_its_square(qr):
    """The year and its square beside an intercept (a quadratic trend in raw years): the Gram
    matrix's centred correlation has an eigenvalue of 9e-7, so collinearity is judged on the
    R factor of a QR pass, and the result still matches statsmodels (fitted in rescaled units)."""
    ds = macro().assign(n=macro()["pop"])
    ds["yr2"] = ds["yr"] ** 2
    x = ["gdp", "yr", "yr2"]
    res = dg.fit(ds, "unemployed", x, dg.Binomial(trials="n"), progress=False, qr=qr)
    df = ds.to_dataframe().reset_index().rename(columns={"unemployed": "y"})
    units = {"gdp": 1e12, "yr": 1e3, "yr2": 1e6}
    for c in x:
        df[c] = df[c] / units[c]
    ref = statsmodels_fit("binomial", df, x, trials="n")
    factor = np.array([1.0] + [units[c] for c in x])
    assert rel_err(res.params.to_numpy(), np.asarray(ref.params) / factor) <= 1e-6
    assert rel_err(res.bse.to_numpy(), np.asarray(ref.bse) / factor) <= 1e-5


@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1e11, 1e13])
@pytest.mark.parametrize("solver", ["newton", "newton_schulz"])
def test_poisson_is_scale_free_in_y(scale, solver):
    """PPML's slopes do not depend on the unit of y (GDP in dollars or in 1e-20 of them): US
    macro data, real investment on real GDP and unemployment, y rescaled. Newton's stopping
    rule follows the response's scale: with an absolute bound alone it stopped at the first
    step for tiny outcomes (reporting convergence, 1% off) and never stopped for outcomes in
    the 1e22s (its decrement stalls at the gradient's rounding). Reference: statsmodels' GLM at
    the data's own scale."""
    m = sm.datasets.macrodata.load_pandas().data
    X = np.column_stack([np.ones(len(m)), np.log(m["realgdp"]), m["unemp"]])
    ref = sm.GLM(m["realinv"].to_numpy(), X, family=sm.families.Poisson()).fit(tol=1e-14)
    ds = xr.Dataset(
        {
            "inv": ("t", m["realinv"].to_numpy() * scale * 1e9),  # in dollars, then rescaled
            "lgdp": ("t", np.log(m["realgdp"].to_numpy())),
            "unemp": ("t", m["unemp"].to_numpy()),
        }
    )
    res = dg.fit(ds, "inv", ["lgdp", "unemp"], "poisson", solver=solver)
    assert res.converged, res.message
    np.testing.assert_allclose(res.params[["lgdp", "unemp"]].to_numpy(), ref.params[1:], rtol=1e-8)
