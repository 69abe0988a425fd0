"""NB2's compiled cell kernel (``families_numba``) against scipy and finite differences, and its
fused rows-plus-deviance call (``cell_stats_deviance``) against the separate calls.

``tests/test_families_numba.py`` compares every kernel with the numpy reference
(``Family.derivatives``). Here NB2's, on slabs of the sweep's length with counts on both sides
of the lookup table's limit (the slab length), non-integer and missing responses:

* ``f`` is scipy's ``nbinom.logpmf`` plus ``log y!`` (the constant the kernel leaves out), the
  unit deviance is twice the saturated less the fitted ``logpmf``;
* ``g, h`` and the ``theta = log alpha`` rows ``f_t, f_et, f_tt`` are central differences of the
  compiled ``f`` (and ``g``, ``f_t``);
* ``cell_stats_deviance`` gives ``cell_stats`` and ``cell_deviance`` bit for bit, for every
  family, and the lookups give the cell-by-cell values bit for bit, as do the two ways of
  computing the cells outside the table (one by one when few, vectorised series when many);
* counts in the tens of thousands (the series path) against scipy, and Stirling's ``lgamma``
  against mpmath.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from daskglm.kernels import families_numba as fn
from daskglm.kernels.chunk_numba import SLAB_CELLS
from daskglm.kernels.families import Binomial, Exponential, Gaussian, NegativeBinomial, Poisson

ALPHAS = (0.02, 0.5, 3.0)


def _cells(alpha: float, n: int = SLAB_CELLS, seed: int = 0):
    """NB2 counts at realistic means (eta in [-3, 9]: counts up to ~1e4, above the slab length
    for some), a few zeros, non-integer and nan responses."""
    rng = np.random.default_rng(seed)
    eta = rng.uniform(-3.0, 9.0, n)
    r = 1.0 / alpha
    y = rng.negative_binomial(r, r / (r + np.exp(eta))).astype(np.float64)
    y[:6] = [0.0, 2.5, 1e5, float(n - 1), float(n), 0.25]
    return y, eta


def _kernel(alpha: float, estimated: bool):
    family = NegativeBinomial() if estimated else NegativeBinomial(alpha=alpha)
    kernel = family.cell_kernel()
    return kernel, kernel.theta(np.array([np.log(alpha)]) if estimated else np.zeros(0))


def _stats(kernel, theta, y, eta):
    out = np.empty((kernel.n_rows, y.size))
    ones = np.ones(y.size)
    kernel.stats(y, eta, ones, 1.0 - ones, theta, out)
    return out


@pytest.mark.parametrize("alpha", ALPHAS)
def test_f_and_deviance_against_scipy(alpha):
    y, eta = _cells(alpha)
    kernel, theta = _kernel(alpha, True)
    f = _stats(kernel, theta, y, eta)[0]
    dev = np.empty(y.size)
    kernel.deviance(y, eta, np.ones(y.size), np.zeros(y.size), theta, dev)
    whole = y == np.floor(y)  # scipy's pmf is for counts
    r = 1.0 / alpha
    mu = np.exp(eta[whole])
    logpmf = stats.nbinom.logpmf(y[whole], r, r / (r + mu))
    np.testing.assert_allclose(f[whole], logpmf + special.gammaln(y[whole] + 1.0), rtol=1e-11, atol=1e-11)
    saturated = stats.nbinom.logpmf(y[whole], r, r / (r + y[whole]))
    np.testing.assert_allclose(dev[whole], 2.0 * (saturated - logpmf), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_derivative_rows_against_finite_differences(alpha):
    y, eta = _cells(alpha, n=4096, seed=1)
    kernel, theta = _kernel(alpha, True)
    rows = _stats(kernel, theta, y, eta)
    step = 1e-5

    def central(row, d_eta=0.0, d_theta=0.0):
        up = _stats(kernel, theta + d_theta, y, eta + d_eta)[row]
        down = _stats(kernel, theta - d_theta, y, eta - d_eta)[row]
        return (up - down) / (2 * step)

    f, g, h, f_t, f_et, f_tt = rows
    fin = np.isfinite(y)
    for got, want, what in (
        (g, central(0, d_eta=step), "g = df/deta"),
        (h, central(1, d_eta=step), "h = dg/deta"),
        (f_t, central(0, d_theta=step), "f_t = df/dtheta"),
        (f_et, central(1, d_theta=step), "f_et = dg/dtheta"),
        (f_tt, central(3, d_theta=step), "f_tt = df_t/dtheta"),
    ):
        scale = np.abs(want[fin]) + np.abs(f[fin]) * 1e-3 + 1.0
        err = np.abs(got[fin] - want[fin]) / scale
        assert err.max() < 1e-6, f"{what}: worst relative error {err.max():.2e}"


def _family_cases():
    rng = np.random.default_rng(3)
    n = 3000
    eta = rng.uniform(-4.0, 4.0, n)
    mu = np.exp(eta)
    m = rng.integers(1, 50, n).astype(np.float64)
    ones, zeros = np.ones(n), np.zeros(n)
    counts = rng.poisson(mu).astype(np.float64)
    yield Gaussian(), eta + rng.normal(size=n), eta, ones, zeros, np.zeros(0)
    yield Poisson(), counts, eta, ones, zeros, np.zeros(0)
    yield Exponential("d"), rng.exponential(1.0, n) / mu, eta, ones, (rng.random(n) < 0.7) * 1.0, np.zeros(0)
    yield Binomial("m"), rng.binomial(m.astype(int), 1 / (1 + np.exp(-eta))) * 1.0, eta, m, zeros, np.zeros(0)
    y_nb, _ = _cells(0.5, n=n, seed=4)
    y_nb[10:20] = np.nan
    yield NegativeBinomial(), y_nb, eta, ones, zeros, np.array([np.log(0.5)])
    yield NegativeBinomial(alpha=0.5), y_nb, eta, ones, zeros, np.zeros(0)


@pytest.mark.parametrize("case", list(_family_cases()), ids=lambda c: repr(c[0]))
def test_stats_deviance_equals_the_two_calls(case):
    family, y, eta, m, d, extra = case
    kernel = family.cell_kernel()
    theta = kernel.theta(extra)
    rows = kernel.n_rows + 2  # as the sweep's scratch: more rows than the family fills
    alone, dev_alone = np.full((rows, y.size), 7.0), np.empty(y.size)
    fn.cell_stats(kernel.code, y, eta, m, d, theta, alone)
    fn.cell_deviance(kernel.code, y, eta, m, d, theta, dev_alone)
    both, dev_both = np.full((rows, y.size), 7.0), np.empty(y.size)
    fn.cell_stats_deviance(kernel.code, y, eta, m, d, theta, both, dev_both)
    np.testing.assert_array_equal(both, alone)
    np.testing.assert_array_equal(dev_both, dev_alone)


@pytest.mark.parametrize("n", [0, 1, 2, 7, 300])
def test_lookups_equal_cell_by_cell_values(n):
    """Every slab length down to 0 and 1 cell, every kind of response (whole counts below and at
    the slab length, non-integer, negative, nan, -0.0): the slab's rows and deviance equal those
    of each cell alone (the cell-by-cell path for most counts), to the bit."""
    rng = np.random.default_rng(n)
    kinds = np.array([0.0, 1.0, 3.0, float(n), float(max(n - 1, 0)), 2.5, 1e5, -1.0, np.nan, -0.0])
    y = rng.choice(kinds, n)
    eta = rng.uniform(-5.0, 5.0, n)
    for code, theta in ((4, np.array([np.log(0.3)])), (5, np.array([np.log(2.0)]))):
        rows = 6 if code == 4 else 3
        ones = np.ones(n)
        slab, dev = np.empty((rows, n)), np.empty(n)
        fn.cell_stats_deviance(code, y, eta, ones, ones, theta, slab, dev)
        for i in range(n):
            one, dev1 = np.empty((rows, 1)), np.empty(1)
            fn.cell_stats_deviance(code, y[i : i + 1], eta[i : i + 1], ones[:1], ones[:1], theta, one, dev1)
            np.testing.assert_array_equal(one[:, 0], slab[:, i])
            np.testing.assert_array_equal(dev1[0], dev[i])


def test_few_and_many_leftover_cells_agree_bitwise():
    """Cells outside the lookup table are computed one by one when they are few and by the
    vectorised series (every cell, selected) when they are many: the same numbers to the bit."""
    n = 4096
    rng = np.random.default_rng(11)
    odd = np.array([1e5, 20000.5, float(n), 12345.0, 5.5, 9.25, 0.5, np.nan, np.inf, -2.0])
    few = rng.integers(0, 50, n).astype(np.float64)
    few[: odd.size] = odd  # 10 of 4096 left over: one by one
    many = np.resize(odd, n)  # all left over: the series
    eta = np.resize(rng.uniform(-3.0, 12.0, odd.size), n)
    ones = np.ones(n)
    for code, theta in ((4, np.array([np.log(0.3)])), (5, np.array([np.log(0.01)])), (4, np.array([-3.0]))):
        rows = 6 if code == 4 else 3
        got = {}
        for name, y in (("few", few), ("many", many)):
            out, dev = np.empty((rows, n)), np.empty(n)
            fn.cell_stats_deviance(code, y, eta, ones, ones, theta, out, dev)
            got[name] = (out[:, : odd.size], dev[: odd.size])
        np.testing.assert_array_equal(got["few"][0], got["many"][0])
        np.testing.assert_array_equal(got["few"][1], got["many"][1])


def test_large_counts_against_scipy():
    """Counts in the tens of thousands (most cells outside the table: the series path): ``f``
    and the unit deviance against scipy's ``nbinom``, the special-function rows against scipy's
    ``gammaln``, ``digamma`` and ``polygamma``."""
    rng = np.random.default_rng(12)
    n = SLAB_CELLS
    alpha = 0.3
    r = 1.0 / alpha
    eta = rng.uniform(8.0, 12.0, n)
    mu = np.exp(eta)
    y = rng.negative_binomial(r, r / (r + mu)).astype(np.float64)
    kernel, theta = _kernel(alpha, True)
    f, g, h, f_t, f_et, f_tt = _stats(kernel, theta, y, eta)
    dev = np.empty(n)
    kernel.deviance(y, eta, np.ones(n), np.zeros(n), theta, dev)
    logpmf = stats.nbinom.logpmf(y, r, r / (r + mu))
    np.testing.assert_allclose(f, logpmf + special.gammaln(y + 1.0), rtol=1e-12)
    # scipy's logpmf is a difference of gammaln values ~1e6: its rounding is ~1e-10 absolute
    big = 1e-14 * special.gammaln(y + r)
    saturated = stats.nbinom.logpmf(y, r, r / (r + y))
    np.testing.assert_allclose(dev, 2.0 * (saturated - logpmf), rtol=1e-10, atol=big.max())
    f_r = special.digamma(y + r) - special.digamma(r) + np.log(r) - np.log(r + mu) + (mu - y) / (r + mu)
    f_rr = (
        special.polygamma(1, y + r)
        - special.polygamma(1, r)
        + 1 / r
        - 1 / (r + mu)
        - (mu - y) / (r + mu) ** 2
    )
    np.testing.assert_allclose(f_t, -r * f_r, rtol=1e-12, atol=1e-13 * r * (np.log(r + mu).max() + 1))
    np.testing.assert_allclose(f_tt, r * f_r + r * r * f_rr, rtol=1e-12, atol=1e-13 * r * r)


def test_lgamma_series_against_mpmath():
    """``lgamma`` of ``x >= 10`` by Stirling's series (vectorisable): as close to mpmath as libm's."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    x = np.concatenate([np.linspace(10.0, 12.0, 201), np.geomspace(10.0, 1e12, 201), [9.999999, 5.0, 0.5]])
    got = np.array([fn._lgamma(v) for v in x])
    want = np.array([float(mpmath.loggamma(mpmath.mpf(v))) for v in x])
    np.testing.assert_allclose(got, want, rtol=6e-16, atol=0)
