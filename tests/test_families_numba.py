"""The compiled per-cell family maths (``families_numba``) against the numpy reference.

Every family of the registry, on realistic cells (eta from -30 to 30, counts up to 1e5, zero
cells, trials up to 1000, alpha from 1e-4 to 100, censoring): the compiled ``f, g, h`` (and NB2's
``f_t, f_et, f_tt``) and unit deviance equal ``Family.derivatives`` / ``Family.unit_deviance``
to 1e-12. "Equal" is relative to the size of the terms each formula adds: where a result is a
difference of much larger terms (``y - mu`` with ``y ~ mu``, NB2's ``digamma(y + r) - digamma(r)``
for ``r = 1e4``), the numpy reference itself carries only the terms' relative precision, and an
ulp of difference in ``exp`` shows up there in either direction. Away from such cancellation
the tolerance is 1e-12 of the result itself. The special functions are checked against scipy and
mpmath, and the exponential against ``np.exp`` in ulps.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from scipy import special

from daskglm.api.registry import FAMILIES
from daskglm.kernels import families_numba as fn
from daskglm.kernels.families import Binomial, Exponential, Gaussian, NegativeBinomial, Poisson

N = 4096
RTOL = 1e-12


def _eta(rng, n=N):
    eta = rng.uniform(-30.0, 30.0, n)
    eta[:8] = [-30.0, 30.0, 0.0, -23.0, 23.0, -1e-12, 1e-12, 11.5]
    return eta


def _counts(rng, mean, n=N):
    """Counts with mean ``mean`` capped at 1e5, a tenth of them zero."""
    y = rng.poisson(np.minimum(mean, 1e5)).astype(np.float64)
    y[rng.random(n) < 0.1] = 0.0
    return y


def _nb_counts(rng, mean, alpha):
    r = 1.0 / alpha
    mu = np.minimum(mean, 1e5)
    y = rng.negative_binomial(r, r / (r + mu)).astype(np.float64)
    return np.minimum(y, 1e5)


def _case(name: str, variant: str, seed: int = 0):
    """(family, y, eta, trials, event, estimated extra parameters) of one test case."""
    rng = np.random.default_rng(seed)
    eta = _eta(rng)
    ones, zeros = np.ones(N), np.zeros(N)
    if name == "gaussian":
        return Gaussian(), eta + rng.normal(0, 10, N), eta, ones, zeros, np.zeros(0)
    if name == "poisson":
        if variant == "ppml":  # non-integer responses, some zero
            y = np.exp(np.clip(eta, -30, 11.5)) * rng.lognormal(0, 1, N)
            y[rng.random(N) < 0.2] = 0.0
        else:
            y = _counts(rng, np.exp(eta))
        return Poisson(), y, eta, ones, zeros, np.zeros(0)
    if name == "exponential":
        y = rng.exponential(1.0, N) / np.exp(np.clip(eta, -30, 30))
        event = (rng.random(N) < 0.7).astype(np.float64)  # 30% censored
        return Exponential(event="d"), y, eta, ones, event, np.zeros(0)
    if name == "binomial":
        m = ones if variant == "bernoulli" else rng.integers(1, 1001, N).astype(np.float64)
        y = rng.binomial(m.astype(np.int64), special.expit(eta)).astype(np.float64)
        y[:4] = [0.0, m[1], 0.0, m[3]]
        return Binomial(trials="m"), y, eta, m, zeros, np.zeros(0)
    if name == "negative_binomial":
        kind, alpha = variant.split("-")
        alpha = float(alpha)
        y = _nb_counts(rng, np.exp(eta), alpha)
        if kind == "estimated":
            return NegativeBinomial(), y, eta, ones, zeros, np.array([np.log(alpha)])
        return NegativeBinomial(alpha=alpha), y, eta, ones, zeros, np.zeros(0)
    raise KeyError(name)


VARIANTS = {
    "gaussian": ["plain"],
    "poisson": ["counts", "ppml"],
    "exponential": ["censored"],
    "binomial": ["bernoulli", "trials"],
    "negative_binomial": [
        f"{kind}-{alpha:g}" for kind in ("estimated", "fixed") for alpha in (1e-4, 0.05, 1.0, 100.0)
    ],
}

CASES = [(name, v) for name in sorted(FAMILIES) for v in VARIANTS.get(name, ["missing"])]


def _scales(family, y, eta, m, d, r):
    """Per row (f, g, h, f_t, f_et, f_tt, deviance): the sum of the absolute values of the terms
    the reference adds, i.e. what the reference's own rounding is relative to."""
    mu = np.exp(eta)
    if isinstance(family, Gaussian):
        res = np.abs(y - eta)
        return [res * res, res, np.ones_like(y)], res * res
    if isinstance(family, Poisson):
        dev = 2 * (np.abs(special.xlogy(y, y)) + np.abs(y * eta) + y + mu)
        return [np.abs(y * eta) + mu, y + mu, mu], dev
    if isinstance(family, Exponential):
        mut = mu * y
        return [np.abs(d * eta) + mut, d + mut, mut], 2 * (np.abs(d * np.log(mut)) + d + mut)
    if isinstance(family, Binomial):
        p = special.expit(eta)
        la = np.logaddexp(0.0, eta)
        mu_b = m * p
        # 1 - p and m - mu are computed with an absolute error of ~1 ulp of 1 (of m)
        t2 = np.abs(special.xlogy(m - y, (m - y) / (m - mu_b)))
        dev = 2 * (np.abs(special.xlogy(y, y / mu_b)) + t2 + (m - y) * m * 1e-4 / np.abs(m - mu_b))
        return [np.abs(y * eta) + m * la, y + mu_b, mu_b * (1 - p) + mu_b * 1e-4], dev
    # NB2
    rmu = r + mu
    lr, lrmu = abs(np.log(r)), np.abs(np.log(rmu))
    lg = np.abs(special.gammaln(y + r)) + abs(special.gammaln(r))
    dg = np.abs(special.digamma(y + r)) + abs(special.digamma(r))
    tg = np.abs(special.polygamma(1, y + r)) + abs(special.polygamma(1, r))
    f = lg + r * (lr + lrmu) + y * (np.abs(eta) + lrmu)
    f_r = dg + lr + lrmu + np.abs(mu - y) / rmu
    f_rr = tg + 1 / r + 1 / rmu + np.abs(mu - y) / rmu**2
    rows = [f, r * (y + mu) / rmu, mu * r * (r + y) / rmu**2]
    rows += [r * f_r, r * mu * (y + mu) / rmu**2, r * f_r + r * r * f_rr]
    dev = 2 * (np.abs(special.xlogy(y, y)) + np.abs(y * eta) + (y + r) * (np.abs(np.log(y + r)) + lrmu))
    return rows, dev


def _assert_close(actual, expected, scale, what):
    tol = RTOL * np.maximum(np.abs(expected), scale)
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    bad = ~(np.abs(actual - expected) <= tol) & ~same
    if bad.any():
        i = np.flatnonzero(bad)[0]
        pytest.fail(
            f"{what}: {bad.sum()} cells differ, e.g. cell {i}: {actual[i]!r} vs {expected[i]!r} "
            f"(scale {scale[i]:.3g})"
        )


@pytest.fixture(scope="module")
def compiled():
    """Compile (or load from numba's cache) every kernel once for the module."""
    for name, variant in CASES:
        family, y, eta, m, d, extra = _case(name, variant)
        kernel = family.cell_kernel()
        if kernel is not None:
            theta = kernel.theta(extra)
            kernel.stats(y[:2], eta[:2], m[:2], d[:2], theta, np.empty((kernel.n_rows, 2)))
            kernel.deviance(y[:2], eta[:2], m[:2], d[:2], theta, np.empty(2))
    return True


@pytest.mark.parametrize("name, variant", CASES)
def test_kernel_matches_numpy(compiled, name, variant):
    family, y, eta, m, d, extra = _case(name, variant)
    kernel = fn.cell_kernel(family)
    assert kernel is not None, f"family {name!r} has no compiled kernel"
    assert kernel.n_rows == (6 if family.n_extra else 3)
    theta = kernel.theta(extra)
    out = np.full((kernel.n_rows, N), np.nan)
    kernel.stats(y, eta, m, d, theta, out)
    aux = {"trials": m, "event": d}
    with np.errstate(all="ignore"):
        ref = family.derivatives(y, eta, aux, extra)
        rows = [ref.f, ref.g, ref.h] + ([ref.f_t, ref.f_et, ref.f_tt] if family.n_extra else [])
        r = 1.0 / family.alpha if getattr(family, "alpha", None) else np.exp(-extra[0]) if extra.size else 0.0
        scales, dev_scale = _scales(family, y, eta, m, d, r)
        dev_ref = family.unit_deviance(y, eta, aux, extra)
    labels = ("f", "g", "h", "f_t", "f_et", "f_tt")[: len(rows)]
    for k, (label, expected) in enumerate(zip(labels, rows, strict=True)):
        _assert_close(out[k], expected, scales[k], f"{name} {variant} {label}")
    dev = np.full(N, np.nan)
    kernel.deviance(y, eta, m, d, theta, dev)
    _assert_close(dev, dev_ref, dev_scale, f"{name} {variant} deviance")
    # the same kernel through the numbered dispatch that cached sweeps call
    by_code, dev_by_code = np.full_like(out, np.nan), np.full(N, np.nan)
    fn.cell_stats(kernel.code, y, eta, m, d, theta, by_code)
    fn.cell_deviance(kernel.code, y, eta, m, d, theta, dev_by_code)
    np.testing.assert_array_equal(by_code, out)
    np.testing.assert_array_equal(dev_by_code, dev)


def test_every_family_has_a_case_and_a_kernel(compiled):
    assert set(VARIANTS) == set(FAMILIES)
    for cls in FAMILIES.values():
        assert fn.cell_kernel(cls()) is not None, cls


def test_nb2_theta_is_log_alpha_fixed_or_estimated():
    assert np.array_equal(NegativeBinomial(alpha=0.25).cell_kernel().theta(np.zeros(0)), [np.log(0.25)])
    assert np.array_equal(NegativeBinomial().cell_kernel().theta(np.array([0.3])), [0.3])
    assert Poisson().cell_kernel().theta(np.zeros(0)).shape == (0,)


def test_nb2_table_and_cellwise_paths_agree_bitwise(compiled):
    """Whole counts below the slab length come from a table, others are evaluated cell by cell
    (here: each cell alone, a slab of one): the same numbers, to the bit."""
    rng = np.random.default_rng(5)
    n = 300
    eta = rng.uniform(-5, 5, n)
    y = rng.integers(0, 400, n).astype(np.float64)  # some below n (table), some above
    y[:3] = [0.0, 2.5, 1e5]
    kernel = NegativeBinomial().cell_kernel()
    theta = np.array([np.log(0.3)])
    slab = np.empty((6, n))
    kernel.stats(y, eta, np.ones(n), np.zeros(n), theta, slab)
    alone = np.empty((6, n))
    for i in range(n):
        one = np.empty((6, 1))
        kernel.stats(y[i : i + 1], eta[i : i + 1], np.ones(1), np.zeros(1), theta, one)
        alone[:, i] = one[:, 0]
    np.testing.assert_array_equal(alone, slab)


@numba.njit(cache=True)
def _special_array(which, x, out):
    for i in range(x.shape[0]):
        out[i] = fn.digamma(x[i]) if which == 0 else fn.trigamma(x[i])


def _apply(f, x):
    out = np.empty_like(x)
    _special_array(0 if f is fn.digamma else 1, x, out)
    return out


def test_digamma_trigamma_against_scipy():
    x = np.concatenate([np.geomspace(1e-8, 1e8, 20001), np.linspace(0.5, 12.0, 5001), np.arange(1.0, 60.0)])
    for ours, ref in ((fn.digamma, special.digamma), (fn.trigamma, lambda v: special.polygamma(1, v))):
        got, want = _apply(ours, x), ref(x)
        rel = np.abs(got - want) / np.abs(want)
        assert rel.max() < 1.5e-15, (ours, x[np.argmax(rel)], rel.max())
    assert np.isnan(_apply(fn.digamma, np.array([0.0, -1.0, np.nan]))).all()
    assert _apply(fn.digamma, np.array([np.inf]))[0] == np.inf
    assert _apply(fn.trigamma, np.array([np.inf]))[0] == 0.0


def test_digamma_near_its_root_against_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    x = np.array([1.4616321449683622, 1.46163214496836, 1.4616321449683662, 1.4616, 1.47])
    want = np.array([float(mpmath.digamma(mpmath.mpf(v))) for v in x])
    got = _apply(fn.digamma, x)
    np.testing.assert_allclose(got, want, rtol=4e-16, atol=0)


def _ulps(a, b):
    return np.abs(a.view(np.int64) - b.view(np.int64))


def test_exp_against_numpy_in_ulps():
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            rng.uniform(-745.2, 709.8, 200_000),
            rng.uniform(-30, 30, 200_000),
            rng.uniform(-1e-3, 1e-3, 10_000),
            np.linspace(-708.5, -745.0, 10_000),  # subnormal results
            [709.782712893384, 709.7827128933841, -745.1332191019411, -745.1332191019412],
            [0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e300, -1e300, np.inf, -np.inf, np.nan],
        ]
    )
    got = np.empty_like(x)
    fn.exp_array(x, got)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    finite = np.isfinite(want) & (want > 0)
    assert _ulps(got[finite], want[finite]).max() <= 1
    np.testing.assert_array_equal(got[~finite], want[~finite])  # inf, 0 and nan exactly


def test_log_and_log1p_against_numpy_in_ulps():
    rng = np.random.default_rng(4)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-744, 709, 200_000)),
            rng.uniform(0.5, 2.0, 100_000),
            1.0 + rng.uniform(-1e-6, 1e-6, 10_000),
            [5e-324, 1e-310, 2.2250738585072014e-308, 1.0, 2.0, np.nextafter(1, 2), 1.7976931348623157e308],
        ]
    )
    got = np.empty_like(x)
    fn.log_array(x, got)
    assert _ulps(got, np.log(x)).max() <= 1
    special_x = np.array([0.0, -0.0, -1.0, np.inf, -np.inf, np.nan])
    got = np.empty_like(special_x)
    fn.log_array(special_x, got)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got, np.log(special_x))
    u = np.concatenate(
        [np.exp(rng.uniform(-744, 0, 100_000)), rng.uniform(-0.9, 3.0, 100_000), [0.0, 5e-324]]
    )
    got = np.empty_like(u)
    fn.log1p_array(u, got)
    assert _ulps(got, np.log1p(u)).max() <= 1


@pytest.mark.parametrize(
    "name, variant",
    [(n, v[0]) for n, v in VARIANTS.items()] + [("binomial", "trials"), ("negative_binomial", "fixed-1")],
)
def test_kernel_matches_numpy_at_extreme_eta(compiled, name, variant):
    """eta far beyond any fit (|eta| up to 1e300, inf, nan): the same infinities and nans as numpy."""
    family, y, eta, m, d, extra = _case(name, variant)
    eta = eta.copy()
    k = 64
    eta[:k] = np.resize(
        [-1e300, -1000.0, -745.5, -709.0, 709.0, 710.0, 1000.0, 1e300, -np.inf, np.inf, np.nan], k
    )
    kernel = family.cell_kernel()
    theta = kernel.theta(extra)
    out = np.empty((kernel.n_rows, N))
    kernel.stats(y, eta, m, d, theta, out)
    dev = np.empty(N)
    kernel.deviance(y, eta, m, d, theta, dev)
    aux = {"trials": m, "event": d}
    with np.errstate(all="ignore"):
        ref = family.derivatives(y, eta, aux, extra)
        rows = [ref.f, ref.g, ref.h] + ([ref.f_t, ref.f_et, ref.f_tt] if family.n_extra else [])
        rows.append(family.unit_deviance(y, eta, aux, extra))
        r = 1.0 / family.alpha if getattr(family, "alpha", None) else np.exp(-extra[0]) if extra.size else 0.0
        scales, dev_scale = _scales(family, y, eta, m, d, r)
    for got, want, scale in zip([*out, dev], rows, [*scales[: len(rows) - 1], dev_scale], strict=True):
        finite = np.isfinite(want[:k])
        np.testing.assert_array_equal(np.isfinite(got[:k]), finite)
        np.testing.assert_array_equal(got[:k][~finite], want[:k][~finite])  # same inf / nan
        _assert_close(got[:k][finite], want[:k][finite], scale[:k][finite], f"{name} {variant}")
