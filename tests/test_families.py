"""Per-family derivatives against finite differences, and log-likelihoods against scipy.stats.

Every family of the registry is covered (the registry is what ``dg.fit`` dispatches on).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

import daskglm as dg
from daskglm.api.registry import FAMILIES
from daskglm.kernels.families import count_index, shifted_special


def sample(name: str, n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    eta = rng.uniform(-1.5, 1.5, n)
    aux = {}
    if name == "gaussian":
        y = eta + rng.normal(size=n)
    elif name in ("poisson", "negative_binomial"):
        y = rng.poisson(np.exp(eta) * 2).astype(float)
    elif name == "binomial":
        aux["trials"] = rng.integers(1, 15, n).astype(float)
        y = rng.binomial(aux["trials"].astype(int), 0.5).astype(float)
    elif name == "exponential":
        aux["event"] = rng.integers(0, 2, n).astype(float)
        y = rng.exponential(1.0, n)
    return y, eta, aux


def instances():
    out = []
    for name, cls in FAMILIES.items():
        out.append(pytest.param(cls(), id=name))
    out.append(pytest.param(dg.NegativeBinomial(alpha=0.4), id="nb_fixed"))
    return out


@pytest.mark.parametrize("family", instances())
def test_eta_derivatives_match_finite_differences(family):
    y, eta, aux = sample(family.name)
    theta = np.array([np.log(0.6)])[: family.n_extra]
    d = family.derivatives(y, eta, aux, theta)
    step = 1e-5
    up = family.derivatives(y, eta + step, aux, theta)
    dn = family.derivatives(y, eta - step, aux, theta)
    np.testing.assert_allclose(d.g, (up.f - dn.f) / (2 * step), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d.h, (up.g - dn.g) / (2 * step), rtol=1e-6, atol=1e-7)


def test_nb2_log_alpha_derivatives_match_finite_differences():
    fam = dg.NegativeBinomial()
    y, eta, aux = sample("negative_binomial", seed=3)
    for theta0 in (-2.0, np.log(0.6), 1.0):
        t = np.array([theta0])
        step = 1e-5
        d = fam.derivatives(y, eta, aux, t)
        up = fam.derivatives(y, eta, aux, t + step)
        dn = fam.derivatives(y, eta, aux, t - step)
        np.testing.assert_allclose(d.f_t, (up.f - dn.f) / (2 * step), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(d.f_tt, (up.f_t - dn.f_t) / (2 * step), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(d.f_et, (up.g - dn.g) / (2 * step), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["poisson", "binomial", "negative_binomial", "exponential"])
def test_full_loglikelihood_matches_scipy(name):
    """f + constant is the full log-likelihood R and Stata report (scipy.stats as reference)."""
    y, eta, aux = sample(name, seed=5)
    fam = FAMILIES[name]()
    theta = np.array([np.log(0.6)])[: fam.n_extra]
    ll = fam.derivatives(y, eta, aux, theta).f + fam.constant(y, aux)
    if name == "poisson":
        ref = stats.poisson.logpmf(y, np.exp(eta))
    elif name == "binomial":
        ref = stats.binom.logpmf(y, aux["trials"], 1 / (1 + np.exp(-eta)))
    elif name == "negative_binomial":
        r = 1 / 0.6
        ref = stats.nbinom.logpmf(y, r, r / (r + np.exp(eta)))
    else:
        lam, d = np.exp(eta), aux["event"]
        ref = d * stats.expon.logpdf(y, scale=1 / lam) + (1 - d) * stats.expon.logsf(y, scale=1 / lam)
    np.testing.assert_allclose(ll, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", instances())
def test_unit_deviance_is_twice_the_gap_to_the_saturated_model(family):
    y, eta, aux = sample(family.name, seed=7)
    theta = np.array([np.log(0.6)])[: family.n_extra]
    sat = family.saturated(y, aux)
    if sat is None:  # NB2 with alpha estimated: saturated model at the same alpha
        sat = dg.NegativeBinomial(alpha=0.6).saturated(y, aux)
    f = family.derivatives(y, eta, aux, theta).f
    np.testing.assert_allclose(family.unit_deviance(y, eta, aux, theta), 2 * (sat - f), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fn", [special.gammaln, special.digamma, lambda x: special.polygamma(1, x)])
@pytest.mark.parametrize(
    "y",
    [
        np.array([0.0, 1.0, 3.0, 0.0, 17.0, 250.0]),  # counts: tabulated
        np.array([0.0, 1.5, 2.25]),  # not whole numbers: evaluated per cell
        np.array([0.0, 3.0, 2.0e6]),  # beyond the table's range: per cell
    ],
)
def test_nb2_shifted_special_functions_match_scipy(fn, y):
    r = 1.7
    y2 = y.reshape(-1, 1)
    got = shifted_special(fn, y2, r, count_index(y2))
    np.testing.assert_allclose(got.ravel(), fn(y + r) - fn(r), rtol=1e-14, atol=1e-14)
