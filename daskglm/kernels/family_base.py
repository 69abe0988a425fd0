"""What every response family declares: per-cell log-likelihood and its derivatives in the
linear predictor, with the helpers the families share (:mod:`daskglm.kernels.families` holds the
five families).

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
    "compiled_kernel",
    "log_factorial",
    "neg_log_factorial",
    "poisson_saturated",
    "trials_index",
    "trigamma",
    "xlogy",
    "BOUNDARY_ETA",
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


def log_factorial(k: Array) -> Array:
    """``gammaln(k + 1)`` (``log k!``)."""
    return special.gammaln(k + 1.0)


def neg_log_factorial(k: Array) -> Array:
    """``-gammaln(k + 1)`` (negated in the table, not at every cell)."""
    return -special.gammaln(k + 1.0)


def trials_index(y: Array, m: Array) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`table_index` of successes ``y`` and trials ``m`` (same shape, ``y <= m``), or None."""
    y, m = np.asarray(y), np.asarray(m)
    if y.shape != m.shape:
        return None
    im = table_index(m)
    iy = None if im is None else table_index(y)
    if iy is None or not np.all(iy <= im):
        return None
    return iy, im


def trigamma(x):
    return special.polygamma(1, x)


def xlogy(x: Array, y: Array) -> Array:
    return special.xlogy(x, y)


def poisson_saturated(y: Array) -> Array:
    """The Poisson saturated model's ``f``: ``y log y - y``."""
    return xlogy(y, y) - y


def compiled_kernel(kernel: str):
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
