"""Compiled per-cell family maths (numba): f, g, h (and NB2's theta derivatives) of a slab of cells.

The numpy methods :meth:`Family.derivatives <daskglm.kernels.families.Family.derivatives>` and
:meth:`Family.unit_deviance <daskglm.kernels.families.Family.unit_deviance>` are the reference; the
functions here compute the same numbers with the same formulas (same order of operations, same
guards), one compiled loop over a slab instead of a numpy temporary per operation, for the fused
per-chunk sweep to call. A family gives its kernel with ``family.cell_kernel()`` (``None`` when it
has no compiled path); :func:`cell_kernel` is the same call.

The interface (every function ``numba.njit(cache=True)``, so callable from other compiled code):

``stats(y, eta, trials, event, theta, out)``
    ``y, eta, trials, event`` are 1-D float64 arrays of one length ``n`` (pass arrays of 1.0 for
    ``trials`` and 0.0 for ``event`` when the family does not read them); ``out`` is a float64
    ``(n_rows, n)`` array, filled in place: row 0 ``f``, row 1 ``g``, row 2 ``h`` and, when
    ``n_rows == 6`` (an estimated extra parameter), rows 3-5 ``f_t``, ``f_et``, ``f_tt``:
    unweighted, exactly as ``Family.derivatives`` defines them.
``deviance(y, eta, trials, event, theta, out1d)``
    fills ``out1d`` (length ``n``) with ``Family.unit_deviance``.

``cell_stats(code, ...)`` and ``cell_deviance(code, ...)`` call the kernel numbered
``kernel.code``: call these from other cached compiled code (numba does not cache a function
that takes ``stats`` as an argument, so it would compile again in every process and worker).
``cell_stats_deviance(code, ..., out, dev)`` is both at once (the same numbers, bit for bit):
NB2's deviance then shares the rows' ``mu`` and ``log(r + mu)`` instead of a loop of its own.

``theta`` is the kernel's parameter vector: empty except for NB2, where it is ``[log alpha]``
**whether alpha is estimated or fixed** (one compiled function serves every alpha, no recompiling).
:meth:`CellKernel.theta` builds it from the extra parameters the objective estimates
(``params[n_beta:]``): ``kernel.theta(params[n_beta:])``.

``exp``, ``log`` and ``log1p`` are vectorisable versions of the libm functions (exponent bits
and polynomials, no call; within 1 ulp of numpy's, with IEEE inf/nan/overflow/underflow and
subnormals): a libm call per cell (~4 ns) keeps a loop scalar, with them the loops over a slab
vectorise (~0.9 ns per exp or log). Every function is compiled with ``error_model="numpy"``
(a division by zero gives inf/nan as in numpy instead of raising, and the division's check does
not block vectorisation). ``digamma`` and ``trigamma`` are recurrence plus asymptotic series
(``x > 0``), digamma with a fit around its root so that it keeps its relative accuracy there.

NB2 needs ``lgamma``, ``digamma`` and ``trigamma`` of ``y + r`` less their value at ``r`` (the
naive difference, as ``shifted_special`` computes it): whole counts below the slab length are
looked up in a table made per call, other cells are evaluated one by one; the numbers are the
same either way (so are the deviance's ``xlogy(y, y)`` and ``log(y + r)``). The index of each
cell, the largest count and the cells left over come from one loop that vectorises, the lookups
from one loop per table (gathers), and the rows from one loop with a single division per cell
(``1 / (r + mu)``). ``lgamma``, ``digamma`` and ``trigamma`` of ``x >= 10`` are asymptotic series
without a branch or a call (``lgamma``'s is Stirling's, as accurate as libm's), so the table's
entries and, when they are many, the cells left over are computed in loops that vectorise.
``benchmarks/family_cells.py``, slabs of 16384 cells: the six rows 6.4 ns/cell against 9.1
before, 7.3 with the deviance against 15 for the two calls; counts of thousands (no table):
14 against 33.

Every function here is compiled with ``fastmath=False`` *explicitly*: numba lets a callee whose
``fastmath`` is unset inherit its caller's flags, and the compiled sweep that calls these
(:mod:`daskglm.kernels.chunk_numba`) allows reassociation, which folds compensations such as
``x - ((1 + x) - 1)`` in ``log1p`` to zero (``log(1 + e^-30)`` lost its third digit) and would
cache that version for every later caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from numba.core import types
from numba.core.extending import intrinsic

from .families import BOUNDARY_ETA

__all__ = [
    "CellKernel",
    "cell_deviance",
    "cell_kernel",
    "cell_separated",
    "cell_setup",
    "cell_stats",
    "cell_stats_deviance",
    "digamma",
    "exp",
    "exp_array",
    "log",
    "log1p",
    "log1p_array",
    "log_array",
    "log_factorial_table",
    "LOG_FACTORIAL_TABLE",
    "trigamma",
    "GAUSSIAN",
    "POISSON",
    "EXPONENTIAL",
    "BINOMIAL",
    "NEGATIVE_BINOMIAL_FIXED",
    "NEGATIVE_BINOMIAL",
]


class CellKernel(NamedTuple):
    """A family's compiled per-cell functions (see the module docstring for the signatures).

    Attributes
    ----------
    stats : callable
        ``stats(y, eta, trials, event, theta, out)``: fills the ``(n_rows, n)`` array ``out``.
    deviance : callable
        ``deviance(y, eta, trials, event, theta, out1d)``: fills the unit deviance.
    n_rows : int
        Rows of ``out`` that ``stats`` fills: 3 (f, g, h) or 6 (and f_t, f_et, f_tt).
    fixed_theta : tuple of float
        Kernel parameters the objective does not estimate (NB2 with a fixed alpha:
        ``(log alpha,)``); :meth:`theta` appends them to the estimated ones.
    code : int
        The kernel's number for :func:`cell_stats` / :func:`cell_deviance`. A compiled function
        that takes ``stats`` as an argument (or closes over it) is not cached by numba: it
        compiles again in every process. One that calls ``cell_stats(kernel.code, ...)`` is
        cached (``code`` is a runtime integer: one compiled sweep serves every family).
    """

    stats: Callable
    deviance: Callable
    n_rows: int
    fixed_theta: tuple[float, ...] = ()
    code: int = -1

    def theta(self, extra: np.ndarray) -> np.ndarray:
        """The ``theta`` array to pass to :attr:`stats` / :attr:`deviance`, from the extra
        parameters estimated with beta (``params[n_beta:]``, empty for most families)."""
        return np.ascontiguousarray(np.concatenate([np.asarray(extra, np.float64).ravel(), self.fixed_theta]))


def cell_kernel(family) -> CellKernel | None:
    """The compiled kernel of ``family`` (``family.cell_kernel()``), or ``None`` if it has none."""
    method = getattr(family, "cell_kernel", None)
    return None if method is None else method()


# --------------------------------------------------------------------------- exp
@intrinsic
def _as_double(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64 (a register move, vectorisable)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


@intrinsic
def _muladd(typingctx, a, b, c):
    """``a * b + c``, fused where the machine has FMA (``llvm.fmuladd``), vectorisable."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        double = context.get_value_type(types.float64)
        # the type (double, double, double) -> double, borrowed from llvm.fma's declaration
        fnty = builder.module.declare_intrinsic("llvm.fma", [double] * 3).function_type
        return builder.call(builder.module.declare_intrinsic("llvm.fmuladd", [double], fnty), args)

    return sig, codegen


_INV_LN2 = 1.4426950408889634074
# ln 2 split so that k * _LN2_HI is exact for |k| < 2**11 (fdlibm's constants)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def exp(x):  # pragma: no cover - compiled
    """``exp(x)`` without a libm call, so that loops calling it vectorise.

    ``x = k ln2 + r`` with ``|r| <= ln2 / 2``; ``exp(r)`` by its Taylor polynomial of degree 13
    (truncation below 5e-18 relative); times ``2**k`` as two halves ``2**(k//2) 2**(k - k//2)``
    made from exponent bits, so that overflow gives inf and underflow rounds once into the
    subnormals. ``x`` is clamped to ``[-746, 710]`` first (beyond, the result is 0 or inf
    anyway); nan returns nan.
    """
    xc = min(max(x, -746.0), 710.0)
    kf = math.floor(xc * _INV_LN2 + 0.5)
    r = (xc - kf * _LN2_HI) - kf * _LN2_LO
    p = 1.6059043836821614599e-10
    p = _muladd(r, p, 2.0876756987868098979e-09)
    p = _muladd(r, p, 2.5052108385441718775e-08)
    p = _muladd(r, p, 2.7557319223985890653e-07)
    p = _muladd(r, p, 2.7557319223985890653e-06)
    p = _muladd(r, p, 2.4801587301587301587e-05)
    p = _muladd(r, p, 1.9841269841269841270e-04)
    p = _muladd(r, p, 1.3888888888888888889e-03)
    p = _muladd(r, p, 8.3333333333333333333e-03)
    p = _muladd(r, p, 4.1666666666666666667e-02)
    p = _muladd(r, p, 1.6666666666666666667e-01)
    p = _muladd(r, p, 0.5)
    p = _muladd(r, p, 1.0)
    er = _muladd(r, p, 1.0)
    k = np.int64(kf)
    k1 = k >> 1
    k2 = k - k1
    res = er * _as_double((k1 + 1023) << 52) * _as_double((k2 + 1023) << 52)
    return res if x == x else x


@intrinsic
def _as_bits(typingctx, value):
    """Reinterpret the bits of a float64 as an int64 (a register move, vectorisable)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return sig, codegen


#: bits of sqrt(2)/2: subtracting them puts the mantissa of every x in [sqrt(2)/2, sqrt(2))
_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD
_TWO54 = 18014398509481984.0
# fdlibm's log1p(f) coefficients: log(1 + f) = f - hfsq + s (hfsq + R(s^2)), s = f / (2 + f)
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def log(x):  # pragma: no cover - compiled
    """``log(x)`` without a libm call, so that loops calling it vectorise.

    ``x = 2**k (1 + f)`` with ``1 + f`` in ``[sqrt(2)/2, sqrt(2))`` (exponent bits; subnormals
    scaled by 2**54 first), then fdlibm's ``log1p(f)``: ``s = f / (2 + f)`` and a degree-14
    polynomial in ``s`` (its ``Lg1..Lg7``), ``k ln2`` added in two parts. Within 1 ulp of
    ``np.log``; 0 gives -inf, negatives and nan give nan, inf gives inf.
    """
    tiny = x < 2.2250738585072014e-308
    xs = x * _TWO54 if tiny else x
    ix = _as_bits(xs)
    top = ix - _SQRT_HALF_BITS
    k = (top >> 52) - (54 if tiny else 0)
    f = _as_double(ix - ((top >> 52) << 52)) - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * _muladd(w, _muladd(w, _LG6, _LG4), _LG2)
    t2 = z * _muladd(w, _muladd(w, _muladd(w, _LG7, _LG5), _LG3), _LG1)
    big_r = t2 + t1
    dk = float(k)
    res = dk * _LN2_HI - ((hfsq - (s * (hfsq + big_r) + dk * _LN2_LO)) - f)
    # selects, not branches: the loops that call this vectorise
    special = -np.inf if x == 0.0 else (x if x == np.inf else np.nan)
    return res if (x > 0.0) & (x < np.inf) else special


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def log1p(x):  # pragma: no cover - compiled
    """``log(1 + x)`` for ``x > -1`` with :func:`log`: ``log(u) + (x - (u - 1)) / u`` where
    ``u = 1 + x`` rounded (the correction restores what the rounding of ``u`` lost)."""
    u = 1.0 + x
    return log(u) + (x - (u - 1.0)) / u


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def log_array(x, out):  # pragma: no cover - compiled
    """``out[:] = log(x)`` with :func:`log` (for tests and benchmarks)."""
    for i in range(x.shape[0]):
        out[i] = log(x[i])


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def log1p_array(x, out):  # pragma: no cover - compiled
    """``out[:] = log1p(x)`` with :func:`log1p` (for tests and benchmarks)."""
    for i in range(x.shape[0]):
        out[i] = log1p(x[i])


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def exp_array(x, out):  # pragma: no cover - compiled
    """``out[:] = exp(x)`` with :func:`exp` (for tests and benchmarks)."""
    for i in range(x.shape[0]):
        out[i] = exp(x[i])


# --------------------------------------------------------------------------- special functions
# digamma's positive root, split: x0 = _PSI_ROOT_HI + _PSI_ROOT_LO to ~1e-32
_PSI_ROOT_HI = 1.4616321449683622
_PSI_ROOT_LO = 9.549995429965697e-17


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _digamma_big(x):  # pragma: no cover - compiled
    """digamma's asymptotic series for finite ``x >= 10`` (no branch, no call: vectorises)."""
    z = 1.0 / (x * x)
    p = 8.33333333333333333333e-2
    p = -2.10927960927960927961e-2 + z * p
    p = 7.57575757575757575758e-3 + z * p
    p = -4.16666666666666666667e-3 + z * p
    p = 3.96825396825396825397e-3 + z * p
    p = -8.33333333333333333333e-3 + z * p
    p = 8.33333333333333333333e-2 + z * p
    return log(x) - 0.5 / x - z * p


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _trigamma_big(x):  # pragma: no cover - compiled
    """trigamma's asymptotic series for finite ``x >= 10`` (no branch, no call: vectorises)."""
    z = 1.0 / (x * x)
    p = 43867.0 / 798.0
    p = -3617.0 / 510.0 + z * p
    p = 7.0 / 6.0 + z * p
    p = -691.0 / 2730.0 + z * p
    p = 5.0 / 66.0 + z * p
    p = -1.0 / 30.0 + z * p
    p = 1.0 / 42.0 + z * p
    p = -1.0 / 30.0 + z * p
    p = 1.0 / 6.0 + z * p
    return 1.0 / x + (0.5 * z + (z / x) * p)


_HALF_LOG_2PI = 0.91893853320467274178


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _lgamma_big(x):  # pragma: no cover - compiled
    """``lgamma(x)`` for finite ``x >= 10``: Stirling's series through ``x**-15`` (truncation below
    3e-18 relative), with :func:`log`; within 4.5e-16 relative of mpmath on [10, 1e12], as
    libm's and scipy's. No branch, no call: vectorises (1.8 ns/cell against libm's 8)."""
    z = 1.0 / (x * x)
    p = -3617.0 / 122400.0
    p = 1.0 / 156.0 + z * p
    p = -691.0 / 360360.0 + z * p
    p = 1.0 / 1188.0 + z * p
    p = -1.0 / 1680.0 + z * p
    p = 1.0 / 1260.0 + z * p
    p = -1.0 / 360.0 + z * p
    p = 1.0 / 12.0 + z * p
    return ((x - 0.5) * log(x) - x) + (_HALF_LOG_2PI + p / x)


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _asymptotic(x):  # pragma: no cover - compiled
    """Whether ``x`` is in the asymptotic series' range: finite and at least 10."""
    return (x >= 10.0) & (x < np.inf)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _lgamma(x):  # pragma: no cover - compiled
    """``lgamma(x)``: :func:`_lgamma_big` for finite ``x >= 10``, libm's ``lgamma`` below."""
    return _lgamma_big(x) if _asymptotic(x) else math.lgamma(x)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def digamma(x):  # pragma: no cover - compiled
    """The digamma function psi(x) for ``x > 0`` (nan for ``x <= 0`` or nan, inf at inf).

    ``x >= 10``: the asymptotic series through ``x**-14`` (truncation below 5e-17). Below,
    the recurrences ``psi(x) = psi(x + 1) - 1/x`` (``x < 1``) and ``psi(x) = psi(x - 1) + 1/(x - 1)``
    (``2 <= x < 10``) bring ``x`` into ``[1, 2)``, where ``psi(x) = (x - x0) q(x - 1.5)`` with
    ``x0`` the root (in two parts) and ``q`` a degree-21 Chebyshev fit (error 2e-17 relative,
    made with mpmath), so that psi keeps its relative accuracy next to the root as well.
    """
    if not (x > 0.0):
        return np.nan
    if x == np.inf:
        return x
    if x >= 10.0:
        return _digamma_big(x)
    w = 0.0
    if x < 1.0:
        w = -1.0 / x
        x += 1.0
    while x >= 2.0:
        x -= 1.0
        w += 1.0 / x
    t = x - 1.5
    p = -0.00017312261802727394
    p = 0.00025968482126430747 + t * p
    p = -0.00015148586836773365 + t * p
    p = 0.0002272331660987376 + t * p
    p = -0.0004821990530566789 + t * p
    p = 0.0007233266279287554 + t * p
    p = -0.0010376374098418604 + t * p
    p = 0.0015566317474486838 + t * p
    p = -0.002345267632540769 + t * p
    p = 0.003519006401502276 + t * p
    p = -0.005279964873257405 + t * p
    p = 0.007926944646403797 + t * p
    p = -0.011908218001568644 + t * p
    p = 0.0179072524394512 + t * p
    p = -0.02697579675613825 + t * p
    p = 0.04076083381242074 + t * p
    p = -0.061922133273064534 + t * p
    p = 0.09498872445494122 + t * p
    p = -0.14840492305390884 + t * p
    p = 0.2405424842407742 + t * p
    p = -0.4236274212814605 + t * p
    p = 0.951055876031833 + t * p
    return ((x - _PSI_ROOT_HI) - _PSI_ROOT_LO) * p + w


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def trigamma(x):  # pragma: no cover - compiled
    """The trigamma function psi'(x) for ``x > 0`` (nan for ``x <= 0`` or nan, 0 at inf).

    Recurrence ``psi'(x) = psi'(x + 1) + 1/x**2`` up to ``x >= 10``, then the asymptotic series
    ``1/x + 1/(2x^2) + sum B_2k / x^(2k+1)`` through ``B_18`` (truncation below 1e-17 relative).
    """
    if not (x > 0.0):
        return np.nan
    if x == np.inf:
        return 0.0
    w = 0.0
    while x < 10.0:
        w += 1.0 / (x * x)
        x += 1.0
    return w + _trigamma_big(x)


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _xlogy(x, y):  # pragma: no cover - compiled
    """``scipy.special.xlogy``: 0 where ``x == 0`` (and ``y`` is not nan), else ``x log y``."""
    v = x * log(y)
    return 0.0 if (x == 0.0) & (y == y) else v  # a select: the calling loops vectorise


# --------------------------------------------------------------------------- Gaussian
@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _gaussian_stats(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    f, g, h = out[0], out[1], out[2]
    for i in range(y.shape[0]):
        r = y[i] - eta[i]
        f[i] = -0.5 * r * r
        g[i] = r
        h[i] = -1.0


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _gaussian_deviance(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    for i in range(y.shape[0]):
        r = y[i] - eta[i]
        out[i] = r * r


# --------------------------------------------------------------------------- Poisson
@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _poisson_stats(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    f, g, h = out[0], out[1], out[2]
    for i in range(y.shape[0]):
        mu = exp(eta[i])
        f[i] = y[i] * eta[i] - mu
        g[i] = y[i] - mu
        h[i] = -mu


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _poisson_deviance(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    for i in range(y.shape[0]):
        mu = exp(eta[i])
        out[i] = 2.0 * (_xlogy(y[i], y[i]) - y[i] * eta[i] - (y[i] - mu))


# --------------------------------------------------------------------------- exponential
@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _exponential_stats(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    f, g, h = out[0], out[1], out[2]
    for i in range(y.shape[0]):
        d = event[i]
        mut = exp(eta[i]) * y[i]
        f[i] = d * eta[i] - mut
        g[i] = d - mut
        h[i] = -mut


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _exponential_deviance(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    for i in range(y.shape[0]):
        d = event[i]
        mut = exp(eta[i]) * y[i]
        out[i] = 2.0 * (_xlogy(d, d) - d * log(mut) - (d - mut))


# --------------------------------------------------------------------------- binomial (logit)
@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _expit_both(x):  # pragma: no cover - compiled
    # (expit(x), expit(-x)) from one exp, each without the cancellation of 1 - expit(x):
    # e = exp(-|x|), then 1 / (1 + e) is the larger of the two and e / (1 + e) the smaller
    # (selects, not branches: the calling loops vectorise)
    e = exp(-abs(x))
    big = 1.0 / (1.0 + e)
    small = e * big
    pos = x >= 0.0
    return (big if pos else small), (small if pos else big)


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _log1pexp(x):  # pragma: no cover - compiled
    # np.logaddexp(0.0, x), numpy's formula: x + log1p(exp(-x)) for x > 0, else log1p(exp(x))
    # (log1p(exp(0)) = log(2) exactly, as numpy's special case; nan stays nan)
    v = log1p(exp(-abs(x)))
    return x + v if x > 0.0 else v


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _binomial_stats(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    f, g, h = out[0], out[1], out[2]
    n = y.shape[0]
    for i in range(n):
        m = trials[i]
        p, q = _expit_both(eta[i])
        mp = m * p
        g[i] = y[i] - mp
        h[i] = -mp * q
    for i in range(n):
        f[i] = y[i] * eta[i] - trials[i] * _log1pexp(eta[i])


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _binomial_deviance(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    for i in range(y.shape[0]):
        m = trials[i]
        # log space, as Binomial.unit_deviance: nothing underflows at large |eta|; both terms
        # computed, then selected (a term whose count is 0 is 0), so that the loop vectorises
        succ = y[i] * (log(y[i] / m) + _log1pexp(-eta[i]))
        fail = (m - y[i]) * (log((m - y[i]) / m) + _log1pexp(eta[i]))
        out[i] = 2.0 * ((succ if y[i] > 0.0 else 0.0) + (fail if m > y[i] else 0.0))


# --------------------------------------------------------------------------- negative binomial (NB2)
@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _tabulated(v, limit):  # pragma: no cover - compiled
    """Whether a cell's value ``v`` is looked up (:func:`_count_index`'s rule)."""
    return (v >= 0.0) & (v < limit) & (v == math.floor(v))


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _many(miss, n):  # pragma: no cover - compiled
    """Whether the ``miss`` cells a slab of ``n`` does not look up are many (an eighth or more):
    then they are computed for every cell in loops that vectorise and selected, else one by one."""
    return 8 * miss >= n


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _count_index(y, idx):  # pragma: no cover - compiled
    """``idx[i] = y[i]`` where ``y[i]`` is a whole number in ``0 .. len(y) - 1``, else 0.

    Returns the largest index (0 when there is none) and the number of the other cells. One loop
    of selects and an integer maximum, no branch: it vectorises (a branchy scan for the largest
    count cost ~2 ns/cell, this ~0.3)."""
    limit = float(y.shape[0])
    top = 0
    miss = 0
    for i in range(y.shape[0]):
        v = y[i]
        ok = _tabulated(v, limit)
        k = np.int64(v if ok else 0.0)
        idx[i] = k
        top = max(top, k)
        miss += 0 if ok else 1
    return top, miss


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _gather(idx, t0, t1, t2, n_tables, o0, o1, o2):  # pragma: no cover - compiled
    """``o_q[i] = t_q[idx[i]]`` for the first ``n_tables`` (1-3) tables, a loop each: a lookup
    loop alone vectorises (gathers), one that also converts ``y`` to the index does not."""
    n = idx.shape[0]
    for i in range(n):
        o0[i] = t0[idx[i]]
    if n_tables > 1:
        for i in range(n):
            o1[i] = t1[idx[i]]
    if n_tables > 2:
        for i in range(n):
            o2[i] = t2[idx[i]]


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_index(y):  # pragma: no cover - compiled
    """:func:`_count_index` into a new array: ``(idx, top, miss)``, made once per slab and shared
    by the special functions' and the deviance's lookups."""
    idx = np.empty(y.shape[0], np.int64)
    top, miss = _count_index(y, idx)
    return idx, top, miss


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_special(y, r, derivs, lg, dg, tg, idx, top, miss):  # pragma: no cover - compiled
    """``fn(y + r) - fn(r)`` per cell for lgamma (and, if ``derivs``, digamma and trigamma),
    into ``lg`` (``dg``, ``tg``); ``idx, top, miss`` from :func:`_nb2_index`.

    The whole counts ``0 .. top`` (``top`` below the slab length, so the table never costs more
    than the cells) are looked up in a table made here; other cells (larger or non-integer
    ``y``) are evaluated one by one. The numbers are the same either way.
    """
    size = top + 1
    lg0 = math.lgamma(r)
    dg0 = digamma(r) if derivs else 0.0
    tg0 = trigamma(r) if derivs else 0.0
    tl = np.empty(size)
    td = np.empty(size if derivs else 0)
    tt = np.empty(size if derivs else 0)
    _nb2_table(r, derivs, lg0, dg0, tg0, tl, td, tt)
    if derivs:
        _gather(idx, tl, td, tt, 3, lg, dg, tg)
    else:
        _gather(idx, tl, tl, tl, 1, lg, lg, lg)
    if miss:
        _nb2_special_cells(y, r, derivs, lg, dg, tg, lg0, dg0, tg0, miss)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_table(r, derivs, lg0, dg0, tg0, tl, td, tt):  # pragma: no cover - compiled
    """``fn(k + r) - fn(r)`` for ``k = 0 .. len(tl) - 1`` into ``tl`` (and ``td``, ``tt``): the
    asymptotic series where ``k + r >= 10`` in loops that vectorise (a table of thousands of
    counts then costs ~6 ns an entry, not ~30), the first few entries one by one; the values of
    :func:`_lgamma`, :func:`digamma` and :func:`trigamma`, to the bit."""
    size = tl.shape[0]
    for k in range(size):
        x = k + r
        xs = x if _asymptotic(x) else 10.0
        tl[k] = _lgamma_big(xs) - lg0
    if derivs:
        for k in range(size):
            x = k + r
            xs = x if _asymptotic(x) else 10.0
            td[k] = _digamma_big(xs) - dg0
            tt[k] = _trigamma_big(xs) - tg0
    for k in range(size):  # x < 10 (at most the first ten), inf, nan: one by one
        x = k + r
        if _asymptotic(x):
            break
        tl[k] = _lgamma(x) - lg0
        if derivs:
            td[k] = digamma(x) - dg0
            tt[k] = trigamma(x) - tg0


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_special_cells(y, r, derivs, lg, dg, tg, lg0, dg0, tg0, miss):  # pragma: no cover - compiled
    """:func:`_nb2_special` for the ``miss`` cells it does not look up (larger or non-integer
    ``y``), computed with the functions the table uses (the same numbers).

    When they are many (an eighth of the slab or more: large counts), the asymptotic series of
    ``x = y + r >= 10`` are evaluated for every cell in loops that vectorise and kept where they
    apply (selects); whatever is left (``x < 10``, inf, nan) is evaluated one cell at a time.
    """
    n = y.shape[0]
    limit = float(n)
    left = miss
    series = _many(miss, n)
    if series:
        left = 0
        for i in range(n):
            v = y[i]
            x = v + r
            take = (not _tabulated(v, limit)) & _asymptotic(x)
            xs = x if take else 10.0
            value = _lgamma_big(xs) - lg0
            lg[i] = value if take else lg[i]
            left += 0 if take | _tabulated(v, limit) else 1
        if derivs:
            for i in range(n):
                v = y[i]
                x = v + r
                take = (not _tabulated(v, limit)) & _asymptotic(x)
                xs = x if take else 10.0
                d = _digamma_big(xs) - dg0
                t = _trigamma_big(xs) - tg0
                dg[i] = d if take else dg[i]
                tg[i] = t if take else tg[i]
    if left:
        for i in range(n):
            v = y[i]
            x = v + r
            if _tabulated(v, limit) or (series and _asymptotic(x)):
                continue
            lg[i] = _lgamma(x) - lg0
            if derivs:
                dg[i] = digamma(x) - dg0
                tg[i] = trigamma(x) - tg0


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_deviance_terms(y, r, xl, ly, idx, top, miss):  # pragma: no cover - compiled
    """The unit deviance's terms in ``y`` alone, ``xlogy(y, y)`` into ``xl`` and ``log(y + r)``
    into ``ly``: looked up for whole counts as :func:`_nb2_special` (the same numbers; ``idx,
    top, miss`` from :func:`_nb2_index`)."""
    n = y.shape[0]
    size = top + 1
    t_xl = np.empty(size)
    t_ly = np.empty(size)
    for k in range(size):
        v = float(k)
        t_xl[k] = _xlogy(v, v)
        t_ly[k] = log(v + r)
    _gather(idx, t_xl, t_ly, t_ly, 2, xl, ly, ly)
    if miss:
        limit = float(n)
        if _many(miss, n):  # many: every cell's, kept where it is not looked up (vectorises)
            for i in range(n):
                v = y[i]
                keep = _tabulated(v, limit)
                a = _xlogy(v, v)
                b = log(v + r)
                xl[i] = xl[i] if keep else a
                ly[i] = ly[i] if keep else b
        else:
            for i in range(n):
                v = y[i]
                if not _tabulated(v, limit):
                    xl[i] = _xlogy(v, v)
                    ly[i] = log(v + r)


@numba.njit(inline="always", cache=True, error_model="numpy", fastmath=False)
def _nb2_fill(y, eta, theta, out, derivs, dev, with_dev):  # pragma: no cover - compiled
    """NB2's rows (``derivs``: also ``f_t, f_et, f_tt``) and, ``with_dev``, the unit deviance
    into ``dev``, in one loop over the cells (``mu``, ``log(r + mu)`` and one reciprocal
    ``1 / (r + mu)`` shared; the deviance then costs ~1.5 ns/cell instead of a sweep of its own).

    The special-function differences are parked in the rows that replace them (``lg`` in ``f``,
    digamma's in ``f_t``, trigamma's in ``f_tt``), the deviance's ``xlogy(y, y)`` in ``dev``:
    each cell reads and then writes the same element, which does not keep the loop from
    vectorising. Inlined, so ``derivs`` and ``with_dev`` are constants in each caller.
    """
    n = y.shape[0]
    r = math.exp(-theta[0])
    log_r = math.log(r)
    inv_r = 1.0 / r
    f, g, h = out[0], out[1], out[2]
    if derivs:
        dg, tg = out[3], out[5]
    else:
        dg, tg = f, f
    idx, top, miss = _nb2_index(y)  # once for both lookups
    _nb2_special(y, r, derivs, f, dg, tg, idx, top, miss)
    ly = np.empty(n if with_dev else 0)
    if with_dev:
        _nb2_deviance_terms(y, r, dev, ly, idx, top, miss)
    for i in range(n):
        mu = exp(eta[i])
        rmu = r + mu
        inv = 1.0 / rmu
        inv2 = inv * inv
        log_rmu = log(rmu)
        yi = y[i]
        f[i] = f[i] + r * (log_r - log_rmu) + yi * (eta[i] - log_rmu)
        g[i] = r * (yi - mu) * inv
        h[i] = -mu * r * (r + yi) * inv2
        if derivs:
            f_r = dg[i] + log_r - log_rmu + (mu - yi) * inv
            f_rr = tg[i] + inv_r - inv - (mu - yi) * inv2
            out[3, i] = -r * f_r
            out[5, i] = r * f_r + r * r * f_rr
            out[4, i] = -r * mu * (yi - mu) * inv2
        if with_dev:  # _nb2_deviance's formula: log(r + mu) is log(mu + r)
            dev[i] = 2.0 * (dev[i] - yi * eta[i] - (yi + r) * (ly[i] - log_rmu))


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_fixed_stats(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    _nb2_fill(y, eta, theta, out, False, out[0], False)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_stats(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    _nb2_fill(y, eta, theta, out, True, out[0], False)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_fixed_stats_deviance(y, eta, trials, event, theta, out, dev):  # pragma: no cover - compiled
    _nb2_fill(y, eta, theta, out, False, dev, True)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_stats_deviance(y, eta, trials, event, theta, out, dev):  # pragma: no cover - compiled
    _nb2_fill(y, eta, theta, out, True, dev, True)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _nb2_deviance(y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    r = math.exp(-theta[0])
    for i in range(y.shape[0]):
        mu = exp(eta[i])
        yi = y[i]
        out[i] = 2.0 * (_xlogy(yi, yi) - yi * eta[i] - (yi + r) * (log(yi + r) - log(mu + r)))


# --------------------------------------------------------------------------- separation, setup terms
@numba.njit(cache=True, error_model="numpy", fastmath=False)
def cell_separated(code, y, eta, trials, event, used):  # pragma: no cover - compiled
    """The number of used cells that ``Family.separated`` of the kernel numbered ``code`` flags
    (a fitted mean on the boundary: ``eta`` beyond :data:`BOUNDARY_ETA`); 0 for the Gaussian."""
    n = y.shape[0]
    count = 0
    if code == 1 or code == 4 or code == 5:  # Poisson, NB2: a zero count with eta < -B
        for i in range(n):
            count += 1 if used[i] and y[i] == 0.0 and eta[i] < -BOUNDARY_ETA else 0
    elif code == 2:  # exponential: a censored spell with eta + log(T) < -B
        for i in range(n):
            if used[i] and event[i] == 0.0 and eta[i] + math.log(y[i]) < -BOUNDARY_ETA:
                count += 1
    elif code == 3:  # binomial: |eta| > B
        for i in range(n):
            count += 1 if used[i] and abs(eta[i]) > BOUNDARY_ETA else 0
    return count


#: ``log k!`` is looked up for whole counts ``k`` below this (:func:`log_factorial_table`)
LOG_FACTORIAL_TABLE = 4096


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def log_factorial_table(size):  # pragma: no cover - compiled
    """``lgamma(k + 1)`` for ``k = 0 .. size - 1`` (the table :func:`cell_setup` looks up)."""
    t = np.empty(size)
    for k in range(size):
        t[k] = math.lgamma(k + 1.0)
    return t


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def _log_factorial(v, table, out, sign):  # pragma: no cover - compiled
    """``out += sign lgamma(v + 1)`` per cell: looked up in ``table`` for whole ``v`` in its
    range (one vectorised loop), computed for the other cells (the same numbers either way)."""
    n = v.shape[0]
    top = float(table.shape[0] - 1)
    miss = 0
    for i in range(n):
        x = v[i]
        ok = (x >= 0.0) & (x <= top) & (x == math.floor(x))
        t = table[np.int64(x if ok else 0.0)]
        out[i] += sign * t if ok else 0.0
        miss += 0 if ok else 1
    if miss:
        for i in range(n):
            x = v[i]
            if not ((x >= 0.0) & (x <= top) & (x == math.floor(x))):
                out[i] += sign * math.lgamma(x + 1.0)


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def cell_setup(
    code, y, trials, event, used, theta, table, const_only, const, sat, domain
):  # pragma: no cover - compiled
    """The setup pass's family terms of a slab for the kernel numbered ``code``.

    Fills ``const`` with ``Family.constant`` (``-log y!``, ``log C(m, y)``) and, unless
    ``const_only``, ``sat`` with ``Family.saturated`` (nan for NB2 with alpha estimated: it
    depends on alpha) and adds to ``domain[q]`` the used cells breaking
    ``Family.domain_rules()[q]``. ``y`` and the auxiliary arrays hold harmless values at unused
    cells (as ``ChunkData``); ``table`` is :func:`log_factorial_table` (``log k!`` of whole
    counts in its range is looked up: the same numbers as computing it per cell).
    """
    n = y.shape[0]
    for i in range(n):
        const[i] = 0.0
    if not const_only:
        for i in range(n):
            sat[i] = 0.0
    if code == 0 or n == 0:  # Gaussian: no constant, a zero saturated f, no rule
        return
    if code == 2:  # exponential: constant 0, saturated -d (log T + 1); T > 0, d in {0, 1}
        if const_only:
            return
        bad_y = 0
        bad_d = 0
        for i in range(n):
            d = event[i]
            sat[i] = -d * (log(y[i]) + 1.0)
            bad_y += 1 if used[i] & (not (y[i] > 0.0)) else 0
            bad_d += 1 if used[i] & (d != 0.0) & (d != 1.0) else 0
        domain[0] += bad_y
        domain[1] += bad_d
        return
    if code == 3:  # binomial: log C(m, y) = log m! - log y! - log (m - y)!, xlogy terms; four rules
        _log_factorial(trials, table, const, 1.0)
        _log_factorial(y, table, const, -1.0)
        mmy = np.empty(n)
        for i in range(n):
            mmy[i] = trials[i] - y[i]
        _log_factorial(mmy, table, const, -1.0)
        if const_only:
            return
        b0 = 0
        b1 = 0
        b2 = 0
        b3 = 0
        for i in range(n):
            m = trials[i]
            yi = y[i]
            sat[i] = _xlogy(yi, yi) + _xlogy(m - yi, m - yi) - _xlogy(m, m)
            u = used[i]
            b0 += 1 if u & (yi < 0.0) else 0
            b1 += 1 if u & (yi != np.round(yi)) else 0
            b2 += 1 if u & (yi > m) else 0
            b3 += 1 if u & ((not (m >= 1.0)) | (m != np.round(m))) else 0
        domain[0] += b0
        domain[1] += b1
        domain[2] += b2
        domain[3] += b3
        return
    # Poisson, NB2: -log y!; saturated y log y - y (Poisson), NB2's with a fixed alpha; y >= 0
    _log_factorial(y, table, const, -1.0)
    if const_only:
        return
    if code == 1:
        for i in range(n):
            sat[i] = _xlogy(y[i], y[i]) - y[i]
    elif code == 5:  # gammaln(y + r) - gammaln(r) + r (log r - log(r + y)) + y log y - y log(r + y)
        r = math.exp(-theta[0])
        log_r = math.log(r)
        idx, top, miss = _nb2_index(y)
        _nb2_special(y, r, False, sat, sat, sat, idx, top, miss)
        for i in range(n):
            yi = y[i]
            lry = log(r + yi)
            sat[i] = sat[i] + r * (log_r - lry) + _xlogy(yi, yi) - yi * lry
    else:  # NB2 with alpha estimated: the saturated model depends on alpha
        for i in range(n):
            sat[i] = np.nan
    bad_y = 0
    for i in range(n):
        bad_y += 1 if used[i] & (y[i] < 0.0) else 0
    domain[0] += bad_y


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def cell_stats(code, y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    """``stats`` of the kernel numbered ``code`` (:attr:`CellKernel.code`)."""
    if code == 0:
        _gaussian_stats(y, eta, trials, event, theta, out)
    elif code == 1:
        _poisson_stats(y, eta, trials, event, theta, out)
    elif code == 2:
        _exponential_stats(y, eta, trials, event, theta, out)
    elif code == 3:
        _binomial_stats(y, eta, trials, event, theta, out)
    elif code == 4:
        _nb2_stats(y, eta, trials, event, theta, out)
    elif code == 5:
        _nb2_fixed_stats(y, eta, trials, event, theta, out)
    else:
        raise ValueError("cell_stats: unknown kernel code")


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def cell_deviance(code, y, eta, trials, event, theta, out):  # pragma: no cover - compiled
    """``deviance`` of the kernel numbered ``code`` (:attr:`CellKernel.code`)."""
    if code == 0:
        _gaussian_deviance(y, eta, trials, event, theta, out)
    elif code == 1:
        _poisson_deviance(y, eta, trials, event, theta, out)
    elif code == 2:
        _exponential_deviance(y, eta, trials, event, theta, out)
    elif code == 3:
        _binomial_deviance(y, eta, trials, event, theta, out)
    elif code == 4 or code == 5:
        _nb2_deviance(y, eta, trials, event, theta, out)
    else:
        raise ValueError("cell_deviance: unknown kernel code")


@numba.njit(cache=True, error_model="numpy", fastmath=False)
def cell_stats_deviance(code, y, eta, trials, event, theta, out, dev):  # pragma: no cover - compiled
    """:func:`cell_stats` and :func:`cell_deviance` of the kernel numbered ``code`` together: the
    same numbers, bit for bit; NB2's in one loop over the cells (its deviance shares ``mu`` and
    ``log(r + mu)`` with the rows), the other families' as the two calls."""
    if code == 4:
        _nb2_stats_deviance(y, eta, trials, event, theta, out, dev)
    elif code == 5:
        _nb2_fixed_stats_deviance(y, eta, trials, event, theta, out, dev)
    else:
        cell_stats(code, y, eta, trials, event, theta, out)
        cell_deviance(code, y, eta, trials, event, theta, dev)


GAUSSIAN = CellKernel(_gaussian_stats, _gaussian_deviance, 3, code=0)
POISSON = CellKernel(_poisson_stats, _poisson_deviance, 3, code=1)
EXPONENTIAL = CellKernel(_exponential_stats, _exponential_deviance, 3, code=2)
BINOMIAL = CellKernel(_binomial_stats, _binomial_deviance, 3, code=3)
#: NB2 with alpha estimated (``theta = [log alpha]`` from the objective's parameters)
NEGATIVE_BINOMIAL = CellKernel(_nb2_stats, _nb2_deviance, 6, code=4)
#: NB2 with a fixed alpha: use ``NEGATIVE_BINOMIAL_FIXED._replace(fixed_theta=(log(alpha),))``
NEGATIVE_BINOMIAL_FIXED = CellKernel(_nb2_fixed_stats, _nb2_deviance, 3, code=5)
