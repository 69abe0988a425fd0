"""The response families: Gaussian, Poisson, exponential duration, binomial (with trials) and NB2.

Each is a :class:`~daskglm.kernels.family_base.Family` (its per-cell log-likelihood, derivatives and
everything else a family owns, see there); this module re-exports the base's names, so
``from daskglm.kernels.families import Family`` keeps working.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .family_base import (
    BOUNDARY_ETA,
    Array,
    Derivatives,
    DomainRule,
    Family,
    FamilyOption,
    compiled_kernel,
    count_index,
    log_factorial,
    neg_log_factorial,
    per_count,
    poisson_saturated,
    shifted_special,
    table_index,
    trials_index,
    trigamma,
    variable_or_number,
    xlogy,
)

__all__ = [
    "Derivatives",
    "DomainRule",
    "Family",
    "FamilyOption",
    "variable_or_number",
    "count_index",
    "table_index",
    "per_count",
    "shifted_special",
    "Gaussian",
    "Poisson",
    "Binomial",
    "NegativeBinomial",
    "Exponential",
]


class Gaussian(Family):
    """Normal response with identity link.

    The per-cell ``f`` is ``-(y - eta)^2 / 2`` (sigma fixed at 1 during the fit); the reported
    log-likelihood is the concentrated one, ``-n/2 (log(2 pi SSR/n) + 1)``.
    """

    name = "gaussian"
    log_link = False
    linear = True
    estimates_scale = True

    def derivatives(self, y, eta, aux, theta):
        r = y - eta
        return Derivatives(f=-0.5 * r * r, g=r, h=np.full_like(r, -1.0))

    def inverse_link(self, eta):
        return eta

    def cell_kernel(self):
        return compiled_kernel("GAUSSIAN")

    def unit_deviance(self, y, eta, aux, theta):
        r = y - eta
        return r * r

    def saturated(self, y, aux):
        return np.zeros_like(y, dtype=np.float64)

    def start(self, sums):
        return sums["swy"] / sums["sw"], np.zeros(0)

    def full_loglike(self, kernel_ll, deviance, sum_weights, ll_const):
        """The concentrated log-likelihood ``-n/2 (log(2 pi SSR/n) + 1)`` (``n`` the sum of
        weights); ``+inf`` for an exact fit (SSR = 0), as statsmodels' OLS reports, quietly."""
        n = sum_weights
        if not deviance > 0:
            return np.inf
        return -0.5 * n * (np.log(2 * np.pi * deviance / n) + 1.0)

    def sample(self, rng, eta, aux):
        return {"y": eta + rng.standard_normal(eta.shape)}


class _Counts:
    """What the count families (Poisson, NB2) share: counts are >= 0, and a zero count whose
    fitted mean has run off to 0 (eta -> -inf) has no MLE."""

    def separated(self, y, eta, aux):
        return (y == 0) & (eta < -BOUNDARY_ETA)

    def perfect_fit_stats(self, y, aux):
        return (y,)

    def domain_rules(self):
        return (DomainRule("y", "is negative (counts must be >= 0)", lambda y, aux: y < 0),)


class Poisson(_Counts, Family):
    """Poisson counts with log link; ``offset`` / ``exposure`` enter eta.

    Non-integer responses are allowed (pseudo-Poisson / PPML); negative ones are not.
    """

    name = "poisson"
    separation_wording = "a zero count with a fitted mean below 1e-10"
    sim_exposure = True

    def derivatives(self, y, eta, aux, theta):
        mu = np.exp(eta)
        return Derivatives(f=y * eta - mu, g=y - mu, h=-mu)

    def cell_kernel(self):
        return compiled_kernel("POISSON")

    def constant(self, y, aux):
        return per_count(neg_log_factorial, y)

    def unit_deviance(self, y, eta, aux, theta):
        mu = np.exp(eta)
        return 2.0 * (xlogy(y, y) - y * eta - (y - mu))

    def saturated(self, y, aux):
        return per_count(poisson_saturated, y)

    def setup_terms(self, y, aux):
        index = table_index(y)
        return per_count(neg_log_factorial, y, index), per_count(poisson_saturated, y, index)

    def start(self, sums):
        return float(np.log(max(sums["swy"], 1e-300) / sums["swoff"])), np.zeros(0)

    def sample(self, rng, eta, aux):
        return {"y": rng.poisson(np.exp(eta) * aux.get("exposure", 1.0)).astype(np.float64)}


class Exponential(Family):
    """Exponential duration model with right censoring.

    ``y`` is the observed time ``T > 0``; ``event`` is 1 where the event was seen and 0 where the
    spell was censored. The hazard is ``exp(eta)``, so coefficients are log-hazard effects, and
    the log-likelihood is ``sum(d eta - exp(eta) T)`` (R ``survreg``'s convention).
    """

    name = "exponential"
    aux_roles = ("event",)
    options = (
        FamilyOption(
            "event",
            "the event indicator, 1 observed / 0 censored: a panel variable or a number (default 1)",
            variable_or_number,
            "VAR|NUMBER",
        ),
    )
    safe_y = 1.0
    separation_wording = "a censored spell with a fitted cumulative hazard below 1e-10"
    sim_intercept = -1.0

    def __init__(self, event: str | float = 1.0):
        self.event = event

    def aux_sources(self):
        return {"event": self.event}

    def derivatives(self, y, eta, aux, theta):
        d = aux["event"]
        mut = np.exp(eta) * y
        return Derivatives(f=d * eta - mut, g=d - mut, h=-mut)

    def cell_kernel(self):
        return compiled_kernel("EXPONENTIAL")

    def unit_deviance(self, y, eta, aux, theta):
        d = aux["event"]
        mut = np.exp(eta) * y
        return 2.0 * (xlogy(d, d) - d * np.log(mut) - (d - mut))

    def saturated(self, y, aux):
        d = aux["event"]
        return -d * (np.log(y) + 1.0)

    def separated(self, y, eta, aux):
        # a censored spell whose fitted cumulative hazard has run off to 0
        return (aux["event"] == 0) & (eta + np.log(y) < -BOUNDARY_ETA)

    def perfect_fit_stats(self, y, aux):
        return (aux["event"],)

    def domain_rules(self):
        return (
            DomainRule("y", "is not positive (durations must be > 0)", lambda y, aux: ~(y > 0)),
            DomainRule(
                "event",
                "is not 0 or 1 (the event indicator is 1 for an observed event, 0 if censored)",
                lambda y, aux: (aux["event"] != 0) & (aux["event"] != 1),
            ),
        )

    def start(self, sums):
        # the MLE of a constant hazard: events / total time
        return float(np.log(max(sums["swd"], 1e-300) / sums["swyoff"])), np.zeros(0)

    @property
    def sim_outputs(self):
        return ("y", "event")

    def sample(self, rng, eta, aux):
        t_event = rng.exponential(np.exp(-eta))
        censor = rng.exponential(2.0 * np.exp(-eta))  # about a third censored
        return {"y": np.minimum(t_event, censor), "event": (t_event <= censor).astype(np.float64)}

    def __repr__(self):
        return f"Exponential(event={self.event!r})"


class Binomial(Family):
    """Binomial logit: ``y`` successes out of ``trials`` (a variable name or a number)."""

    name = "binomial"
    aux_roles = ("trials",)
    options = (
        FamilyOption(
            "trials",
            "the number of trials per cell: a panel variable or a number (default 1)",
            variable_or_number,
            "VAR|NUMBER",
        ),
    )
    log_link = False
    separation_wording = "fitted probabilities of 0 or 1"
    sim_intercept = -0.5

    def __init__(self, trials: str | float = 1.0):
        self.trials = trials

    def aux_sources(self):
        return {"trials": self.trials}

    def derivatives(self, y, eta, aux, theta):
        m = aux["trials"]
        p = special.expit(eta)
        mp = m * p
        # 1 - p as expit(-eta): at eta ~ 30, 1 - p keeps only a few digits of h
        return Derivatives(f=y * eta - m * np.logaddexp(0.0, eta), g=y - mp, h=-mp * special.expit(-eta))

    def inverse_link(self, eta):
        return special.expit(eta)

    def cell_kernel(self):
        return compiled_kernel("BINOMIAL")

    def constant(self, y, aux):
        return self._constant(y, aux["trials"], trials_index(y, aux["trials"]))

    @staticmethod
    def _constant(y, m, counts):
        if counts is None:
            return special.gammaln(m + 1.0) - special.gammaln(y + 1.0) - special.gammaln(m - y + 1.0)
        iy, im = counts
        table = log_factorial(np.arange(int(im.max()) + 1, dtype=np.float64))
        return table[im] - table[iy] - table[im - iy]

    def unit_deviance(self, y, eta, aux, theta):
        m = aux["trials"]
        # in log space: log(1/p) = log(1 + e^-eta), log(1/(1-p)) = log(1 + e^eta), so nothing
        # underflows at large |eta|; a term whose count is 0 is 0
        succ = np.where(y > 0, xlogy(y, y / m) + y * np.logaddexp(0.0, -eta), 0.0)
        fail = np.where(m > y, xlogy(m - y, (m - y) / m) + (m - y) * np.logaddexp(0.0, eta), 0.0)
        return 2.0 * (succ + fail)

    def saturated(self, y, aux):
        return self._saturated(y, aux["trials"], trials_index(y, aux["trials"]))

    @staticmethod
    def _saturated(y, m, counts):
        if counts is None:
            return xlogy(y, y) + xlogy(m - y, m - y) - xlogy(m, m)
        iy, im = counts
        k = np.arange(int(im.max()) + 1, dtype=np.float64)
        table = xlogy(k, k)
        return table[iy] + table[im - iy] - table[im]

    def setup_terms(self, y, aux):
        m = aux["trials"]
        counts = trials_index(y, m)
        return self._constant(y, m, counts), self._saturated(y, m, counts)

    def separated(self, y, eta, aux):
        # fitted probability within 1e-10 of 0 or 1
        return np.abs(eta) > BOUNDARY_ETA

    def perfect_fit_stats(self, y, aux):
        return (y, aux["trials"] - y)

    def domain_rules(self):
        return (
            DomainRule("y", "is negative", lambda y, aux: y < 0),
            DomainRule("y", "is not a whole number of successes", lambda y, aux: y != np.round(y)),
            DomainRule("y", "exceeds the number of trials", lambda y, aux: y > aux["trials"]),
            DomainRule(
                "trials",
                "is not a positive whole number",
                lambda y, aux: ~(aux["trials"] >= 1) | (aux["trials"] != np.round(aux["trials"])),
            ),
        )

    def start(self, sums):
        p = np.clip(sums["swy"] / sums["swm"], 1e-6, 1 - 1e-6)
        return float(np.log(p / (1 - p))), np.zeros(0)

    def sample(self, rng, eta, aux):
        p = 1.0 / (1.0 + np.exp(-eta))
        return {"y": rng.binomial(aux["trials"].astype(np.int64), p).astype(np.float64)}

    def __repr__(self):
        return f"Binomial(trials={self.trials!r})"


class NegativeBinomial(_Counts, Family):
    """Negative binomial NB2 with log link: ``Var(y) = mu + alpha mu^2``.

    ``alpha=None`` estimates the dispersion jointly with beta, parameterised as
    ``theta = log alpha``; a number fixes it.
    """

    name = "negative_binomial"
    options = (
        FamilyOption(
            "alpha", "fix the dispersion alpha > 0 (default: estimate log-alpha with beta)", float, "ALPHA"
        ),
    )
    separation_wording = "a zero count with a fitted mean below 1e-10"
    ancillary_name = "alpha"
    sim_exposure = True

    def __init__(self, alpha: float | None = None):
        if alpha is not None and not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(
                f"NegativeBinomial(alpha={alpha!r}): alpha must be a positive number, or None to estimate it"
            )
        self.alpha = alpha

    @property
    def extra_names(self):
        return ("log_alpha",) if self.alpha is None else ()

    def _r(self, theta: Array) -> float:
        return 1.0 / self.alpha if self.alpha is not None else float(np.exp(-theta[0]))

    def derivatives(self, y, eta, aux, theta):
        r = self._r(theta)
        mu = np.exp(eta)
        rmu = r + mu
        log_rmu = np.log(rmu)
        index = count_index(y)
        lg = shifted_special(special.gammaln, y, r, index)
        f = lg + r * (np.log(r) - log_rmu) + y * (eta - log_rmu)
        g = r * (y - mu) / rmu
        h = -mu * r * (r + y) / (rmu * rmu)
        d = Derivatives(f=f, g=g, h=h)
        if self.alpha is None:
            # derivatives in r, then chain rule with dr/dtheta = -r
            f_r = shifted_special(special.digamma, y, r, index) + np.log(r) - log_rmu + (mu - y) / rmu
            f_rr = shifted_special(trigamma, y, r, index) + 1.0 / r - 1.0 / rmu - (mu - y) / (rmu * rmu)
            d.f_t = -r * f_r
            d.f_tt = r * f_r + r * r * f_rr
            d.f_et = -r * mu * (y - mu) / (rmu * rmu)
        return d

    def cell_kernel(self):
        # one compiled function for every alpha: the kernel takes theta = [log alpha] either way
        if self.alpha is None:
            return compiled_kernel("NEGATIVE_BINOMIAL")
        kernel = compiled_kernel("NEGATIVE_BINOMIAL_FIXED")
        return None if kernel is None else kernel._replace(fixed_theta=(float(np.log(self.alpha)),))

    def constant(self, y, aux):
        return per_count(neg_log_factorial, y)

    def unit_deviance(self, y, eta, aux, theta):
        r = self._r(theta)
        mu = np.exp(eta)
        return 2.0 * (xlogy(y, y) - y * eta - (y + r) * (np.log(y + r) - np.log(mu + r)))

    def saturated(self, y, aux):
        if self.alpha is None:
            return None
        r = 1.0 / self.alpha
        index = count_index(y)

        def sat(k, index=None):
            lg = shifted_special(special.gammaln, k, r, index)
            return lg + r * (np.log(r) - np.log(r + k)) + xlogy(k, k) - k * np.log(r + k)

        if index is None or int(index.max()) >= index.size:  # per cell (gammaln tabulated if it can)
            return sat(y, index)
        return per_count(sat, y, index)

    def start(self, sums):
        b0 = float(np.log(max(sums["swy"], 1e-300) / sums["swoff"]))
        if self.alpha is not None:
            return b0, np.zeros(0)
        m = sums["swy"] / sums["sw"]
        var = sums["swy2"] / sums["sw"] - m * m
        alpha0 = float(np.clip((var - m) / max(m * m, 1e-12), 0.05, 10.0))
        return b0, np.array([np.log(alpha0)])

    def ancillary(self, theta):
        """``alpha``: the fixed value, or ``exp(theta[0])`` when estimated."""
        return float(self.alpha) if self.alpha is not None else float(np.exp(theta[0]))

    def ancillary_se(self, theta, cov_theta):
        """``alpha * se(log alpha)`` (delta method); ``None`` when alpha is fixed."""
        if self.alpha is not None:
            return None
        return float(self.ancillary(theta) * np.sqrt(np.asarray(cov_theta)[0, 0]))

    def fixed_at(self, theta):
        return self if self.alpha is not None else NegativeBinomial(alpha=self.ancillary(theta))

    def restricted(self):
        return Poisson()

    def sample(self, rng, eta, aux):
        if self.alpha is None:
            raise ValueError("simulating NegativeBinomial needs a fixed alpha: NegativeBinomial(alpha=0.5)")
        mu = np.exp(eta) * aux.get("exposure", 1.0)
        lam = rng.gamma(1.0 / self.alpha, self.alpha * mu)
        return {"y": rng.poisson(lam).astype(np.float64)}

    def __repr__(self):
        return f"NegativeBinomial(alpha={self.alpha!r})"
