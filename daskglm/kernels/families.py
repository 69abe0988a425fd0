"""Response families: per-cell log-likelihood and its derivatives in the linear predictor.

This module is pure numpy/scipy (no dask). Every family works on flat or gridded arrays of
equal shape: ``y`` (the response), ``eta`` (the linear predictor, offset included) and, where
the family needs them, auxiliary arrays (``trials`` for the binomial, ``event`` for the
exponential duration model).

For each cell the family gives

* ``f``: the part of the log-likelihood that depends on the parameters,
* ``g = df/deta`` and ``h = d2f/deta2`` (observed),
* for families with an extra parameter ``theta`` (NB2's ``log alpha``): ``f_t = df/dtheta``,
  ``f_et = d2f/(deta dtheta)`` and ``f_tt = d2f/dtheta2``,

and, separately, ``constant``: the part of the full log-likelihood that depends on neither
(``-log y!`` for Poisson, ``log C(M, y)`` for the binomial), so that ``f + constant`` is the
log-likelihood that R and Stata report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy import special

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

Array = np.ndarray

#: |eta| beyond which a fitted mean (or probability) is taken to have run off to the boundary:
#: exp(-23) ~ 1e-10.
BOUNDARY_ETA = 23.0


@dataclass
class Derivatives:
    """Per-cell log-likelihood pieces; ``None`` where not requested or not defined."""

    f: Array
    g: Array
    h: Array
    f_t: Array | None = None
    f_et: Array | None = None
    f_tt: Array | None = None


@dataclass(frozen=True)
class DomainRule:
    """A condition the data must meet at every used cell.

    ``bad(y, aux)`` returns a boolean array marking the cells that break the rule; ``role`` is
    the input it concerns (``"y"``, ``"trials"``, ``"event"``) and ``problem`` how to say it.
    """

    role: str
    problem: str
    bad: object = field(compare=False)


def variable_or_number(text: str) -> str | float:
    """A family option given as text: a number (``"10"`` -> ``10.0``) or a panel variable's name."""
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class FamilyOption:
    """A constructor keyword of a family, declared once for the API's registry and the CLI.

    ``name`` is the keyword (the instance keeps the value under the same name; the command line
    offers it as ``--name``), ``help`` one line describing it, ``parse`` turns command-line text
    into the value and ``metavar`` is the placeholder shown in ``--help``.
    """

    name: str
    help: str
    parse: Callable[[str], object] = float
    metavar: str = "VALUE"


#: largest count for which :func:`shifted_special` tabulates instead of evaluating per cell
TABLE_MAX_COUNT = 100_000


def count_index(y: Array) -> np.ndarray | None:
    """``y`` as integer indices when it holds whole numbers in ``0 .. TABLE_MAX_COUNT``, else None."""
    y = np.asarray(y)
    if y.size == 0:
        return None
    with np.errstate(invalid="ignore"):  # NaN, inf, huge: some integer, which the checks reject
        yi = y.astype(np.int32)  # half the time of intp for these checks
    if yi.min() < 0 or yi.max() > TABLE_MAX_COUNT or not np.equal(yi, y).all():
        return None
    return yi.astype(np.intp)  # gathers with intp indices are faster


def shifted_special(fn, y: Array, r: float, index: np.ndarray | None = None) -> Array:
    """``fn(y + r) - fn(r)`` at every cell, for counts ``y`` and a scalar ``r``.

    NB2's likelihood and its alpha-derivatives need ``gammaln``, ``digamma`` and ``trigamma`` of
    ``y + r`` at every cell, and ``r`` is one number per pass. When ``index`` (from
    :func:`count_index`, computed once per array) is given, ``fn`` is evaluated once per
    distinct value ``0 .. max(y)`` and gathered: the same numbers, without a special-function
    call per cell. Otherwise ``fn`` is evaluated per cell.
    """
    if index is None:
        return fn(np.asarray(y) + r) - fn(r)
    table = fn(np.arange(int(index.max()) + 1, dtype=np.float64) + r) - fn(r)
    return table[index]


def table_index(y: Array) -> np.ndarray | None:
    """:func:`count_index` of ``y`` when a table over ``0 .. max(y)`` is no longer than ``y``
    (so tabulating never costs more special-function calls than evaluating per cell), else None."""
    index = count_index(y)
    return None if index is None or int(index.max()) >= index.size else index


def per_count(fn, y: Array, index: np.ndarray | None = None) -> Array:
    """``fn(y)`` at every cell for an elementwise ``fn``, evaluated once per whole count.

    With ``index`` (:func:`table_index` of ``y``; found here when not given) ``fn`` is evaluated
    on ``0 .. max(y)`` and gathered: the same numbers as ``fn(y)`` (the same float64 arguments),
    without a special-function call per cell. Where ``y`` holds no whole counts in a moderate
    range, ``fn(y)`` per cell.
    """
    if index is None:
        index = table_index(y)
    if index is None:
        return fn(y)
    return fn(np.arange(int(index.max()) + 1, dtype=np.float64))[index]


def _log_factorial(k: Array) -> Array:
    """``gammaln(k + 1)`` (``log k!``)."""
    return special.gammaln(k + 1.0)


def _neg_log_factorial(k: Array) -> Array:
    """``-gammaln(k + 1)`` (negated in the table, not at every cell)."""
    return -special.gammaln(k + 1.0)


def _trials_index(y: Array, m: Array) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`table_index` of successes ``y`` and trials ``m`` (same shape, ``y <= m``), or None."""
    y, m = np.asarray(y), np.asarray(m)
    if y.shape != m.shape:
        return None
    im = table_index(m)
    iy = None if im is None else table_index(y)
    if iy is None or not np.all(iy <= im):
        return None
    return iy, im


def _trigamma(x):
    return special.polygamma(1, x)


def _xlogy(x: Array, y: Array) -> Array:
    return special.xlogy(x, y)


def _poisson_saturated(y: Array) -> Array:
    """The Poisson saturated model's ``f``: ``y log y - y``."""
    return _xlogy(y, y) - y


def _compiled(kernel: str):
    """The compiled per-cell kernel ``kernel`` of :mod:`daskglm.kernels.families_numba`, or ``None``
    without numba (imported lazily: this module stays importable without it)."""
    try:
        from . import families_numba
    except ImportError:  # pragma: no cover - numba absent
        return None
    return getattr(families_numba, kernel)


class Family:
    """Base class of the response families.

    Subclasses set ``name`` and implement :meth:`derivatives`, :meth:`inverse_link`,
    :meth:`constant`, :meth:`unit_deviance`, :meth:`saturated` and :meth:`start`. Everything
    else that differs between families is declared here and overridden where it differs (no
    module outside this one and the registry asks which family it has;
    ``tests/test_architecture.py`` checks that): the fit's numerics (:attr:`linear`,
    :attr:`estimates_scale`, :meth:`dispersion`), what the results report
    (:meth:`full_loglike`, :meth:`scale`, the ancillary parameter: :attr:`ancillary_name`,
    :meth:`ancillary`, :meth:`ancillary_se`, :meth:`fixed_at`, :meth:`restricted`), the
    separation warning (:meth:`separated`, :attr:`separation_wording`) and simulation
    (:meth:`sample`, :attr:`sim_intercept`, :attr:`sim_exposure`). A new family is one
    subclass plus one entry of :data:`daskglm.api.registry.FAMILIES`.
    """

    name: ClassVar[str] = ""
    #: auxiliary inputs (panel variables) the family reads, by role
    aux_roles: ClassVar[tuple[str, ...]] = ()
    #: value used for ``y`` at masked cells, so that f, g, h stay finite there
    safe_y: ClassVar[float] = 0.0
    #: whether the fitted mean is ``exp(eta)`` (log link): offsets/exposure make sense
    log_link: ClassVar[bool] = True
    #: the constructor's keywords (see :class:`FamilyOption`); the registry and CLI read them
    options: ClassVar[tuple[FamilyOption, ...]] = ()
    #: the cell gradient is ``y - eta`` and the second derivative ``-1`` (least squares; the
    #: Gaussian): the Hessian does not depend on the parameters, the gradient is linear in the
    #: data, so it can be summed in double-double (:mod:`daskglm.kernels.qr`'s ``"newton"`` pass,
    #: :mod:`daskglm.kernels.accurate`) and Newton switches to the exact QR route at a lower condition
    #: number
    linear: ClassVar[bool] = False
    #: whether the fit estimates a scale ``phi`` from the deviance (the Gaussian's ``sigma^2``):
    #: standard errors are multiplied by it and LL differences are divided by it
    estimates_scale: ClassVar[bool] = False
    #: the used cells that :meth:`separated` flags, as the separation warning words them
    separation_wording: ClassVar[str] = "a zero response (or a censored spell) with a fitted mean below 1e-10"
    #: name of the ancillary parameter reported beside the coefficients (NB2's ``"alpha"``)
    ancillary_name: ClassVar[str | None] = None
    #: the true intercept of simulated panels (:func:`daskglm.api.simulate.simulate_panel`)
    sim_intercept: ClassVar[float] = 1.0
    #: whether simulated panels may carry an ``exposure`` (counts with a log link)
    sim_exposure: ClassVar[bool] = False

    # ----------------------------------------------------------------- parameters
    @property
    def extra_names(self) -> tuple[str, ...]:
        """Names of the extra parameters estimated with beta (e.g. ``("log_alpha",)``)."""
        return ()

    @property
    def n_extra(self) -> int:
        return len(self.extra_names)

    def aux_sources(self) -> dict[str, object]:
        """Map of auxiliary role to the variable name or number the user gave."""
        return {}

    # ----------------------------------------------------------------- per-cell maths
    def derivatives(self, y: Array, eta: Array, aux: dict[str, Array], theta: Array) -> Derivatives:
        raise NotImplementedError

    def inverse_link(self, eta: Array) -> Array:
        """The mean function at ``eta``: ``eta`` (Gaussian), ``exp(eta)`` (log links: the
        Poisson/NB2 mean, the exponential model's hazard rate), ``expit(eta)`` (the binomial
        success probability)."""
        return np.exp(eta)

    def constant(self, y: Array, aux: dict[str, Array]) -> Array:
        """Per-cell log-likelihood terms that depend on no parameter."""
        return np.zeros_like(y, dtype=np.float64)

    def unit_deviance(self, y: Array, eta: Array, aux: dict[str, Array], theta: Array) -> Array:
        """Per-cell deviance ``2 (f_saturated - f)``."""
        raise NotImplementedError

    def cell_kernel(self):
        """The compiled :meth:`derivatives` and :meth:`unit_deviance` of this family (a
        :class:`daskglm.kernels.families_numba.CellKernel`), or ``None`` when it has none."""
        return None

    def saturated(self, y: Array, aux: dict[str, Array]) -> Array | None:
        """Per-cell ``f`` of the saturated model, or ``None`` if it depends on ``theta``."""
        raise NotImplementedError

    def setup_terms(self, y: Array, aux: dict[str, Array]) -> tuple[Array, Array | None]:
        """:meth:`constant` and :meth:`saturated` together (the setup pass needs both; a family
        whose terms are tabulated per count finds the counts' index once)."""
        return self.constant(y, aux), self.saturated(y, aux)

    def separated(self, y: Array, eta: Array, aux: dict[str, Array]) -> Array | None:
        """Cells whose fitted mean sits on the boundary (a sign of separation), if defined."""
        return None

    def domain_rules(self) -> tuple[DomainRule, ...]:
        return ()

    def perfect_fit_stats(self, y: Array, aux: dict[str, Array]) -> tuple[Array, ...]:
        """Non-negative per-cell quantities whose sum over a fixed-effect level is 0 exactly
        when that level's estimate runs off to infinity (all counts 0, all failures, no event).

        Fixed-effect fits drop the cells of such levels before fitting, as fixest does.
        """
        return ()

    def start(self, sums: dict[str, float]) -> tuple[float, Array]:
        """Starting intercept and extra parameters from a few weighted sums.

        ``sums`` has ``sw`` (sum of weights), ``swy`` (sum of w*y), ``swy2``, ``swoff``
        (sum of w*exp(offset)) and, for the binomial, ``swm`` (sum of w*trials).
        """
        raise NotImplementedError

    # ----------------------------------------------------------------- reported statistics
    def full_loglike(self, kernel_ll: float, deviance: float, sum_weights: float, ll_const: float) -> float:
        """The log-likelihood R, Stata and statsmodels report, from the fit's.

        Parameters
        ----------
        kernel_ll : float
            Sum of the cells' weighted ``f`` (the part the solvers see).
        deviance : float
            The fit's deviance.
        sum_weights : float
            Sum of the used cells' weights.
        ll_const : float
            Sum of the cells' weighted :meth:`constant`.

        Returns
        -------
        float
            ``kernel_ll + ll_const`` (families without a scale).
        """
        return kernel_ll + ll_const

    def scale(self, deviance: float, df_resid: float) -> float:
        """The scale reported and used by the non-robust covariance: ``deviance / df_resid``
        where :attr:`estimates_scale`, else 1.

        Parameters
        ----------
        deviance : float
            The fit's deviance.
        df_resid : float
            Residual degrees of freedom (sum of weights minus the coefficients).

        Returns
        -------
        float
        """
        return deviance / df_resid if self.estimates_scale else 1.0

    def dispersion(self, deviance: float, sum_weights: float, floor: float) -> float:
        """The dispersion ``phi`` by which the solvers divide log-likelihood differences.

        The fit runs with ``phi = 1``; where :attr:`estimates_scale`, differences are in
        likelihood units only once divided by the MLE ``deviance / sum_weights``.

        Parameters
        ----------
        deviance, sum_weights : float
            The evaluation's deviance and the used cells' sum of weights.
        floor : float
            Smallest value returned where the scale is estimated: an exact fit (NIST's
            Wampler1) has deviance 0, and dividing by rounding noise would keep the Newton
            decrement from ever looking small.

        Returns
        -------
        float
            1 for families without a scale.
        """
        if not self.estimates_scale:
            return 1.0
        return max(deviance / sum_weights, floor, 1e-300)

    def ancillary(self, theta: Array) -> float | None:
        """The reported value of :attr:`ancillary_name` (NB2's ``alpha``).

        Parameters
        ----------
        theta : ndarray
            The fit's extra parameters (:attr:`extra_names`; empty when fixed).

        Returns
        -------
        float or None
            ``None`` for families without an ancillary parameter.
        """
        return None

    def ancillary_se(self, theta: Array, cov_theta: Array) -> float | None:
        """Standard error of :meth:`ancillary` (delta method from ``theta``'s covariance);
        ``None`` where the parameter is fixed or absent."""
        return None

    def fixed_at(self, theta: Array) -> Family:
        """This family with its extra parameters fixed at ``theta`` (NB2 at the fit's alpha, for
        the null deviance as R's ``glm.nb`` computes it); ``self`` when it has none."""
        return self

    def restricted(self) -> Family | None:
        """The family at the boundary of the ancillary parameter (NB2's ``alpha = 0``: Poisson),
        for a likelihood-ratio test; ``None`` where there is none."""
        return None

    # ----------------------------------------------------------------- simulation
    def sample(self, rng: np.random.Generator, eta: Array, aux: dict[str, Array]) -> dict[str, Array]:
        """Draw responses at linear predictors ``eta`` (:func:`daskglm.api.simulate.simulate_panel`).

        Parameters
        ----------
        rng : numpy.random.Generator
        eta : ndarray
            Linear predictor per cell (without exposure).
        aux : dict
            ``"exposure"`` where :attr:`sim_exposure` and requested; the family's auxiliary
            inputs other than those it draws (the binomial's ``"trials"``).

        Returns
        -------
        dict
            ``"y"`` and any auxiliary variables drawn with it (the exponential's ``"event"``).
        """
        raise NotImplementedError(f"{type(self).__name__} has no simulator")

    @property
    def sim_outputs(self) -> tuple[str, ...]:
        """Variables :meth:`sample` returns: ``"y"`` and the drawn auxiliary roles."""
        return ("y",)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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
        return _compiled("GAUSSIAN")

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


class Poisson(Family):
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
        return _compiled("POISSON")

    def constant(self, y, aux):
        return per_count(_neg_log_factorial, y)

    def unit_deviance(self, y, eta, aux, theta):
        mu = np.exp(eta)
        return 2.0 * (_xlogy(y, y) - y * eta - (y - mu))

    def saturated(self, y, aux):
        return per_count(_poisson_saturated, y)

    def setup_terms(self, y, aux):
        index = table_index(y)
        return per_count(_neg_log_factorial, y, index), per_count(_poisson_saturated, y, index)

    def separated(self, y, eta, aux):
        # a zero count whose fitted mean has run off to 0 (eta -> -inf): the MLE does not exist
        return (y == 0) & (eta < -BOUNDARY_ETA)

    def perfect_fit_stats(self, y, aux):
        return (y,)

    def domain_rules(self):
        return (DomainRule("y", "is negative (counts must be >= 0)", lambda y, aux: y < 0),)

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
        return _compiled("EXPONENTIAL")

    def unit_deviance(self, y, eta, aux, theta):
        d = aux["event"]
        mut = np.exp(eta) * y
        return 2.0 * (_xlogy(d, d) - d * np.log(mut) - (d - mut))

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
        return _compiled("BINOMIAL")

    def constant(self, y, aux):
        return self._constant(y, aux["trials"], _trials_index(y, aux["trials"]))

    @staticmethod
    def _constant(y, m, counts):
        if counts is None:
            return special.gammaln(m + 1.0) - special.gammaln(y + 1.0) - special.gammaln(m - y + 1.0)
        iy, im = counts
        table = _log_factorial(np.arange(int(im.max()) + 1, dtype=np.float64))
        return table[im] - table[iy] - table[im - iy]

    def unit_deviance(self, y, eta, aux, theta):
        m = aux["trials"]
        # in log space: log(1/p) = log(1 + e^-eta), log(1/(1-p)) = log(1 + e^eta), so nothing
        # underflows at large |eta|; a term whose count is 0 is 0
        succ = np.where(y > 0, _xlogy(y, y / m) + y * np.logaddexp(0.0, -eta), 0.0)
        fail = np.where(m > y, _xlogy(m - y, (m - y) / m) + (m - y) * np.logaddexp(0.0, eta), 0.0)
        return 2.0 * (succ + fail)

    def saturated(self, y, aux):
        return self._saturated(y, aux["trials"], _trials_index(y, aux["trials"]))

    @staticmethod
    def _saturated(y, m, counts):
        if counts is None:
            return _xlogy(y, y) + _xlogy(m - y, m - y) - _xlogy(m, m)
        iy, im = counts
        k = np.arange(int(im.max()) + 1, dtype=np.float64)
        table = _xlogy(k, k)
        return table[iy] + table[im - iy] - table[im]

    def setup_terms(self, y, aux):
        m = aux["trials"]
        counts = _trials_index(y, m)
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


class NegativeBinomial(Family):
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
            f_rr = shifted_special(_trigamma, y, r, index) + 1.0 / r - 1.0 / rmu - (mu - y) / (rmu * rmu)
            d.f_t = -r * f_r
            d.f_tt = r * f_r + r * r * f_rr
            d.f_et = -r * mu * (y - mu) / (rmu * rmu)
        return d

    def cell_kernel(self):
        # one compiled function for every alpha: the kernel takes theta = [log alpha] either way
        if self.alpha is None:
            return _compiled("NEGATIVE_BINOMIAL")
        kernel = _compiled("NEGATIVE_BINOMIAL_FIXED")
        return None if kernel is None else kernel._replace(fixed_theta=(float(np.log(self.alpha)),))

    def constant(self, y, aux):
        return per_count(_neg_log_factorial, y)

    def unit_deviance(self, y, eta, aux, theta):
        r = self._r(theta)
        mu = np.exp(eta)
        return 2.0 * (_xlogy(y, y) - y * eta - (y + r) * (np.log(y + r) - np.log(mu + r)))

    def saturated(self, y, aux):
        if self.alpha is None:
            return None
        r = 1.0 / self.alpha
        index = count_index(y)

        def sat(k, index=None):
            lg = shifted_special(special.gammaln, k, r, index)
            return lg + r * (np.log(r) - np.log(r + k)) + _xlogy(k, k) - k * np.log(r + k)

        if index is None or int(index.max()) >= index.size:  # per cell (gammaln tabulated if it can)
            return sat(y, index)
        return per_count(sat, y, index)

    def separated(self, y, eta, aux):
        return (y == 0) & (eta < -BOUNDARY_ETA)

    def perfect_fit_stats(self, y, aux):
        return (y,)

    def domain_rules(self):
        return (DomainRule("y", "is negative (counts must be >= 0)", lambda y, aux: y < 0),)

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
