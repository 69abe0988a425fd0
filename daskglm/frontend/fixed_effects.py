"""Models with fixed effects: the objective the solvers see, level dropping, inference.

Front-end layer over :mod:`daskglm.graph.effects`. Newton runs on all parameters (covariates,
NB2's log-alpha and every effect level) but never forms the effects' block of the Hessian:
:meth:`FixedEffectsObjective.direction` concentrates the effects out (the Schur complement of
DESIGN.md section 6) with :func:`~daskglm.kernels.effects.block_pcg`, whose products each read only the
kept ``W = -w h`` and level arrays.

Passes per Newton iteration: one evaluation pass over the data (LL, gradients, the covariates'
Hessian, the effects' diagonals and cross blocks, ``W`` kept), then one inner pass over ``W``
per conjugate-gradient step (warm-started from the previous iteration's solution), plus one
evaluation per step halving.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from ..graph.effects import FixedEffectPasses
from ..graph.passes import PassCounter
from ..kernels.checks import DataError, SetupInfo
from ..kernels.clustering import _dims_of, intersections
from ..kernels.effects import Effect, block_pcg
from ..solvers.base import Evaluation
from ..solvers.newton import information_condition, newton_direction
from .panel import Panel

__all__ = [
    "AbsorbedWarning",
    "FixedEffectsObjective",
    "LevelDrops",
    "drop_degenerate_levels",
    "parse_effects",
    "fe_covariance",
]

log = logging.getLogger("daskglm")

#: a covariate whose variation left after partialling out the effects (and the covariates
#: before it) is below this fraction of its own (squared norm) is absorbed, as fixest's
#: ``collin.tol``
ABSORBED_TOL = 1e-9

#: relative residual of the first Newton step's inner solve (it also decides absorption)
INNER_RTOL = 1e-11

#: tightest relative residual of the inner solves of the later Newton steps
STEP_RTOL = 1e-9

#: relative residual of the inner solve for the covariance at the estimates
FINAL_RTOL = 1e-9

#: loosest relative residual of the inner solves (the Newton steps far from the optimum)
LOOSE_RTOL = 1e-2

#: a Newton decrement (likelihood units) below this from a loose inner solve is checked by
#: solving again at INNER_RTOL before Newton may stop on it (the stopping rule's default tol is
#: 1e-8; a loose Schur complement understated the decrement sixfold on the trade panel)
LAST_STEP_DECREMENT = 1e-6

#: ... when the loose solve's error times the concentrated information's condition number
#: exceeds this (the trade panel's log(dist_km) * Year: 9e5 x 1e-2; the gravity benchmark's last
#: steps: 1.2 x 2e-5, left as they are)
LOOSE_STEP_ERROR = 1e-3

#: the inner solve's relative residual is this times the square root of the relative Newton
#: decrement (inexact Newton's forcing term; at the gravity benchmark's 2e6 cells 0.1 and
#: LOOSE_RTOL 1e-2 took 57 products instead of 73 (1e-2 and 1e-4) for the same 8 Newton steps)
FORCING = 0.1


class AbsorbedWarning(UserWarning):
    """A covariate is absorbed by the fixed effects (or collinear with them) and was dropped."""


def parse_effects(fe, dims: tuple[str, ...], sizes: dict[str, int]) -> list[Effect]:
    """``fe=`` as a list of :class:`Effect`: entries are a dim, a tuple of dims, or fixest's
    ``"a^b"``; a string with ``+`` lists several (``"exporter^year + importer^year"``)."""
    if isinstance(fe, str):
        fe = [p for p in fe.split("+") if p.strip()]
    elif isinstance(fe, tuple) and all(isinstance(d, str) for d in fe) and len(fe) > 0:
        # a bare tuple of dims is one interacted effect
        fe = [fe]
    out: list[Effect] = []
    for entry in fe:
        names = _dims_of(entry, dims, "fe=")
        if len(names) == len(dims):
            raise ValueError(
                f"fe= entry {entry!r} spans every panel dim {dims}: one coefficient per cell is a "
                "saturated model that fits every observation exactly. Use effects on fewer dims"
            )
        axes = tuple(dims.index(d) for d in names)
        eff = Effect(names, axes, tuple(sizes[d] for d in names))
        if eff in out:
            raise ValueError(f"fe= lists the effect {eff.name!r} twice")
        out.append(eff)
    if not out:
        raise ValueError("fe= is empty; give at least one panel dim or tuple of dims")
    return out


@dataclass
class LevelDrops:
    """Levels left out of a fixed-effects fit and why."""

    dropped: list[np.ndarray]
    n_used: list[np.ndarray]
    sum_weights: float
    #: saturated log-likelihood of the used cells (0 for NB2 with alpha estimated, unused)
    ll_sat: float
    n_cells_dropped: int
    n_levels_dropped: dict[str, int]
    passes: int

    def levels(self) -> list[int]:
        """Levels with at least one used cell, per effect."""
        return [int(np.count_nonzero(n > 0)) for n in self.n_used]


def drop_degenerate_levels(passes: FixedEffectPasses, singletons: bool = True) -> LevelDrops:
    """Find the levels whose estimate is infinite (the family's :meth:`perfect_fit_stats`
    sum to 0, e.g. all counts 0) and, with ``singletons``, levels with one used cell; drop
    their cells and repeat until no level changes (dropping can create new ones)."""
    effects = passes.effects
    dropped = [np.zeros(e.shape, dtype=bool) for e in effects]
    first = None
    rounds = 0
    while True:
        rounds += 1
        levels = [np.where(d, np.nan, 0.0) for d in dropped]
        counts = passes.counts(levels)
        if first is None:
            first = counts
        new = []
        for c, d in zip(counts, dropped, strict=True):
            n = c[..., 0]
            bad = (n == 0) | np.any(c[..., 3:] <= 0, axis=-1)
            if singletons:
                bad |= n == 1
            new.append(d | bad)
        if all(np.array_equal(a, b) for a, b in zip(new, dropped, strict=True)):
            break
        dropped = new
    n_first = int(first[0][..., 0].sum())
    n_now = int(counts[0][..., 0].sum())
    if n_now == 0:
        why = "one used cell (singletons)" if singletons else ""
        raise DataError(
            f"every level of the fixed effects {[e.name for e in effects]} is dropped: each has "
            f"a response that the effect alone predicts perfectly (all 0, all trials, no event)"
            + (f" or {why}" if why else "")
            + ". There is nothing left to estimate: use coarser effects, or fewer of them"
        )
    n_levels = {
        e.name: int(np.count_nonzero(d & (f[..., 0] > 0)))
        for e, d, f in zip(effects, dropped, first, strict=True)
    }
    return LevelDrops(
        dropped,
        [c[..., 0] for c in counts],
        float(counts[0][..., 1].sum()),
        float(counts[0][..., 2].sum()),
        n_first - n_now,
        n_levels,
        rounds,
    )


class FixedEffectsObjective:
    """The log-likelihood of a model with fixed effects, for the solvers.

    Parameters are ``[beta, extra, a_1.ravel(), ..., a_E.ravel()]``; dropped levels stay at 0
    in the vector and enter the kernels as NaN (their cells are left out).
    """

    def __init__(
        self,
        panel: Panel,
        setup: SetupInfo,
        effects: Sequence[Effect],
        counter: PassCounter,
        passes: FixedEffectPasses,
        drops: LevelDrops,
    ):
        self.panel = panel
        self.setup = setup
        self.layout = setup.layout
        self.effects = list(effects)
        self.counter = counter
        self.fe = passes
        self.drops = drops
        self.n_small = self.layout.n_params
        self.n_beta = self.layout.n_beta
        self.sizes = [e.size for e in self.effects]
        self.n_params = self.n_small + sum(self.sizes)
        self.intercept_index = None
        #: covariates (and extra parameters) still estimated; absorbed ones are fixed at 0
        self.active = np.ones(self.n_small, dtype=bool)
        self.absorbed: list[str] = []
        self._checked = False
        self._last: tuple[np.ndarray, dict] | None = None
        self._warm: list | None = None
        #: the last inner solve's solution and its product with A (see _concentrated)
        self._product: tuple[list, list] | None = None
        self.inner_iterations: list[int] = []
        #: the last Newton decrement relative to the deviance (sets the inner tolerance)
        self._progress = 1.0
        self.sum_weights = drops.sum_weights
        self.nobs = int(drops.n_used[0].sum())

    @property
    def passes(self) -> int:
        return self.counter.passes

    # ------------------------------------------------------------------ parameter vector
    def split(self, params: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Covariate part and the effect grids (NaN at dropped levels)."""
        small = np.asarray(params[: self.n_small], dtype=np.float64)
        levels, pos = [], self.n_small
        for e, d in zip(self.effects, self.drops.dropped, strict=True):
            a = np.array(params[pos : pos + e.size], dtype=np.float64).reshape(e.shape)
            a[d] = np.nan
            levels.append(a)
            pos += e.size
        return small, levels

    def start(self) -> np.ndarray:
        """The intercept-only estimate in the first effect's levels, zeros elsewhere."""
        b0, extra = self.layout.family.start(self.setup.sums)
        x = np.zeros(self.n_params)
        x[self.n_beta : self.n_small] = extra
        x[self.n_small : self.n_small + self.sizes[0]] = b0
        return x

    # ------------------------------------------------------------------ passes
    def __call__(self, params: np.ndarray, *, hessian: bool = True) -> Evaluation:
        small, levels = self.split(params)
        st = self.fe.evaluate(small, levels, hessian=hessian)
        grad = np.concatenate([st["grad"] * self.active] + [g.ravel() for g in st["grad_fe"]])
        if hessian:
            self._last = (np.array(params), st)
        dev = st["dev"] if "dev" in st else 2.0 * (self.drops.ll_sat - st["ll"])
        return Evaluation(np.array(params), st["ll"], grad, None, dev)

    def dispersion(self, e: Evaluation) -> float:
        """Gaussian fits run with sigma = 1: divide LL differences by the MLE of sigma^2."""
        # floored so that an exact fit (deviance 0) still meets the stopping rule
        floor = 1e-16 * self.setup.sums["swy2"] / max(self.setup.sums["sw"], 1.0)
        return self.layout.family.dispersion(e.deviance, max(self.sum_weights, 1.0), floor)

    def _stats(self, params: np.ndarray) -> dict:
        if self._last is None or not np.array_equal(self._last[0], params):
            self(params, hessian=True)
        return self._last[1]

    def _solve(self, st: dict, rhs: list, rtol: float = INNER_RTOL, x0: list | None = None) -> list:
        """``Z = A^+ rhs`` by :func:`block_pcg`; ``A Z`` (from its residual) is kept in
        ``self._product`` for :meth:`_concentrated`."""
        x0 = self._warm_for(rhs) if x0 is None else x0
        # the previous solve's Z and A Z are let go first (O(levels) each: the client's memory)
        self._warm = self._product = None
        Z, it, rels, AZ = block_pcg(
            self.fe.product,
            rhs,
            st["diag_fe"],
            x0=x0,
            rtol=rtol,
            product=True,
            matvec_flat=self.fe.product_flat,
        )
        self._product = (Z, AZ)
        self.inner_iterations.append(it)
        # the covariates' columns decide the standard errors; the gradient column (the last,
        # when there is one) only the step, which Newton's exact gradient corrects
        rel = float(np.max(rels[: self.n_small], initial=0.0))
        if rel > max(1e3 * rtol, 1e-6):
            warnings.warn(
                f"the fixed effects' inner solve stopped at relative residual {rel:.2g} after {it} "
                "iterations; the estimates may be inaccurate",
                RuntimeWarning,
                stacklevel=3,
            )
        self._warm = Z
        return Z

    def _warm_for(self, rhs: list) -> list | None:
        """The previous solution of the covariates' columns as a start; the gradient column
        starts from zero (it shrinks towards 0 as Newton converges, and a warm start would
        leave a rounding floor far above it)."""
        if self._warm is None:
            return None
        P = self.n_small
        out = []
        for w, r in zip(self._warm, rhs, strict=True):
            x = np.zeros_like(r)
            x[..., :P] = w[..., :P]
            out.append(x)
        return out

    def schur(
        self, st: dict, rtol: float = INNER_RTOL, x0: list | None = None
    ) -> tuple[np.ndarray, np.ndarray, list, list]:
        """Concentrated information ``S = C - B' A^+ B``, the concentrated gradient, the
        projections ``Z = A^+ B`` and ``z = A^+ g_a`` (one block solve)."""
        P = self.n_small
        B = st["cross_fe"]
        rhs = [np.concatenate([b, g[..., None]], axis=-1) for b, g in zip(B, st["grad_fe"], strict=True)]
        sol = self._solve(st, rhs, rtol, x0)
        Z = [s[..., :P] for s in sol]
        z = [s[..., P] for s in sol]
        S = self._concentrated(st, sol)
        gc = st["grad"] - sum(b.reshape(-1, P).T @ zz.ravel() for b, zz in zip(B, z, strict=True))
        return S, gc, Z, z

    def _concentrated(self, st: dict, Z: list) -> np.ndarray:
        """``S = C - B' A^+ B`` as ``C - 2 B'Z + Z'AZ``: equal for the exact ``Z``, but its error
        is second order in the inner solve's, not first order, which keeps covariates whose
        variation is mostly absorbed (a calendar year beside effects) accurate. ``A Z`` is the
        inner solve's own (``B - R``, its residual kept beside the iterate), else one product."""
        P = self.n_small
        kept = self._product
        if kept is not None and all(a is b for a, b in zip(kept[0], Z, strict=True)):
            AZ = [az[..., :P] for az in kept[1]]
            Z = [z[..., :P] for z in Z]
        else:
            AZ = self.fe.product(Z)
        BZ = sum(b.reshape(-1, P).T @ zz.reshape(-1, P) for b, zz in zip(st["cross_fe"], Z, strict=True))
        ZAZ = sum(zz.reshape(-1, P).T @ az.reshape(-1, P) for zz, az in zip(Z, AZ, strict=True))
        S = -st["hess"] - BZ - BZ.T + ZAZ
        return 0.5 * (S + S.T)

    def _check_absorbed(self, S: np.ndarray, C: np.ndarray) -> None:
        """Drop covariates left with (almost) no variation once the effects and the covariates
        before them are partialled out, with a warning naming them."""
        names = self.layout.param_names
        scale = np.sqrt(np.where(np.diag(C) > 0, np.diag(C), 1.0))
        R = S / scale[:, None] / scale[None, :]
        kept: list[int] = []
        for j in range(self.n_beta):
            if not self.active[j]:
                continue
            res = R[j, j]
            if kept:
                K = np.ix_(kept, kept)
                res -= R[j, kept] @ linalg.solve(R[K], R[kept, j], assume_a="pos")
            if not (res > ABSORBED_TOL) or C[j, j] <= 0:
                self.active[j] = False
                self.absorbed.append(names[j])
            else:
                kept.append(j)
        if self.absorbed:
            warnings.warn(
                "covariate(s) "
                + ", ".join(map(repr, self.absorbed))
                + " are absorbed by the fixed effects (constant within their levels, or a "
                "combination of the effects and the other covariates) and were dropped, as fixest does",
                AbsorbedWarning,
                stacklevel=4,
            )
        if not self.active[: self.n_beta].any() and self.n_beta:
            log.info("every covariate is absorbed by the fixed effects")

    def direction(self, e: Evaluation) -> tuple[np.ndarray, bool]:
        """The full Newton step on covariates and effects, the effects concentrated out."""
        st = self._stats(e.params)
        # inexact Newton: the inner solve need only be as accurate as the step still to take
        # (the gradient itself is always exact, so the fit converges to the same optimum)
        # (the first step's solve is tight: it also decides which covariates are absorbed)
        # (a relative error r in the step moves the next iterate by r times the step, whose size
        # is about the square root of the decrement): loose while the steps are large, and
        # loose again for the last, tiny steps, whose error is that fraction of a tiny step
        root = np.sqrt(max(self._progress, 1e-300))
        rtol = float(np.clip(max(FORCING * root, 1e-10 / root), STEP_RTOL, LOOSE_RTOL))
        if not self._checked:
            rtol = INNER_RTOL
        S, gc, Z, z = self.schur(st, rtol)
        if not self._checked:
            self._checked = True
            self._check_absorbed(S, -st["hess"])
        step, damped = self._step(S, gc, Z, z)
        decrement = float(e.grad @ step)
        if rtol > INNER_RTOL and (
            not decrement > 0
            or (decrement <= LAST_STEP_DECREMENT * self.dispersion(e) and self._loose(S, rtol))
        ):
            # solved again to the full inner tolerance when the loose solve's step does not
            # ascend (its Schur complement too far off: a badly conditioned real design, e.g. a
            # raw calendar year interacted with a covariate beside two effects), or when it
            # would be the last step and the loose solve's error, amplified by the concentrated
            # information's condition number, could be large: such a Schur complement
            # understates the decrement left and stops Newton early (OLS on fixest's trade
            # panel with log(dist_km) * Year, condition 9e5: 4e-7 from statsmodels with the
            # loose last step, 9e-11 with this one; the gravity benchmark, condition 1.2, is
            # left as it was)
            S, gc, Z, z = self.schur(st, INNER_RTOL)
            step, damped = self._step(S, gc, Z, z)
            decrement = float(e.grad @ step)
        self._progress = abs(decrement) / (self.dispersion(e) * (abs(e.deviance) + 1.0))
        return step, damped

    def _loose(self, S: np.ndarray, rtol: float) -> bool:
        """Whether an inner solve at ``rtol`` may leave the concentrated information ``S`` too far
        off for a last step: its relative error, about ``rtol`` times ``S``'s (equilibrated)
        condition number, above :data:`LOOSE_STEP_ERROR`."""
        act = np.flatnonzero(self.active)
        if not act.size:
            return False
        return information_condition(-S[np.ix_(act, act)]) * rtol > LOOSE_STEP_ERROR

    def _step(self, S, gc, Z, z) -> tuple[np.ndarray, bool]:
        """The Newton step from the concentrated system and the effects' projections."""
        act = np.flatnonzero(self.active)
        dp = np.zeros(self.n_small)
        damped = False
        if act.size:
            dp[act], damped = newton_direction(gc[act], -S[np.ix_(act, act)])
        da = [zz - Zz @ dp for zz, Zz in zip(z, Z, strict=True)]
        for d, drop in zip(da, self.drops.dropped, strict=True):
            d[drop] = 0.0
        return np.concatenate([dp] + [d.ravel() for d in da]), damped

    def null_fit(self, max_iter: int = 50) -> dict:
        """The constant-only model on the same cells (the effects' drops kept): Newton on the
        constant and NB2's log-alpha, a pass per iteration (the constant sits in the first
        effect's levels). Returns the final statistics of :meth:`FixedEffectsPasses.evaluate`."""
        fam = self.layout.family
        nb, P = self.n_beta, self.n_small
        b0, theta = fam.start(self.setup.sums)
        theta = np.asarray(theta, dtype=np.float64)
        masks = [np.where(d, np.nan, 0.0) for d in self.drops.dropped]

        def at(b, t, **kw):
            small = np.zeros(P)
            small[nb:] = t
            return self.fe.evaluate(small, [masks[0] + b] + masks[1:], **kw)

        st = at(b0, theta)
        for _ in range(max_iter):
            g = np.concatenate([[st["grad_fe"][0].sum()], st["grad"][nb:]])
            info = np.zeros((g.size, g.size))
            info[0, 0] = st["diag_fe"][0].sum()
            cross = st["cross_fe"][0][..., nb:]
            info[0, 1:] = info[1:, 0] = cross.sum(axis=tuple(range(cross.ndim - 1)))
            info[1:, 1:] = -st["hess"][nb:, nb:]
            step, _ = newton_direction(g, -info)
            t = 1.0
            for _ in range(30):
                trial = at(b0 + t * step[0], theta + t * step[1:])
                if np.isfinite(trial["ll"]) and trial["ll"] >= st["ll"] - 1e-12 * abs(st["ll"]):
                    break
                t *= 0.5
            b0, theta, st = b0 + t * step[0], theta + t * step[1:], trial
            if abs(float(g @ step)) < 1e-10 * (abs(st["ll"]) + 1.0):
                break
        return at(b0, theta, hessian=False, final=True)

    # ------------------------------------------------------------------ inference
    #: which results class the public API wraps the fit in
    kind = "fixed_effects"

    def results_options(self, *, ssc: bool = True) -> dict:
        """Extra keyword arguments of the results class."""
        return {"objective": self, "ssc": ssc}

    def covariance(self, final: dict, cov_type: str, ways=None, *, ssc: bool = True) -> np.ndarray:
        """Covariance of the covariates and extra parameters (NaN rows and columns for absorbed
        covariates); see :func:`fe_covariance`."""
        V = fe_covariance(
            final,
            cov_type,
            ways,
            effects=self.effects,
            levels=self.drops.levels(),
            active=self.active,
            nobs=self.sum_weights,
            estimates_scale=self.layout.family.estimates_scale,
            ssc=ssc,
        )
        full = np.full((self.n_small, self.n_small), np.nan)
        act = np.flatnonzero(self.active)
        full[np.ix_(act, act)] = V
        return full

    def final(
        self,
        params: np.ndarray,
        ways: list[tuple[int, ...]] | None,
        inference: bool = True,
        scores: bool = True,
    ) -> dict:
        """Statistics at the estimates: LL, deviance, the concentrated information of the
        active covariates and, for robust/cluster covariances, the partialled-out scores."""
        small, levels = self.split(params)
        st = self.fe.evaluate(small, levels, hessian=inference, final=True)
        out = {k: st[k] for k in ("ll", "dev", "n_separated", "grad", "ll_const")}
        if not inference:
            return out
        self._last = (np.array(params), st)
        P = self.n_small
        Z = self._solve(st, [b for b in st["cross_fe"]], FINAL_RTOL)
        out["info"] = self._concentrated(st, Z)
        parts = intersections(ways) if ways else []
        out["signs"] = [sign for _, sign in parts]
        if not scores:
            out["meat"], out["clusters"] = None, []
            return out
        sc = self.fe.scores(small, levels, Z, [axes for axes, _ in parts])
        out["meat"] = sc["meat"]
        out["clusters"] = []
        for S_c, n_c in sc["clusters"]:
            flat = S_c.reshape(-1, P)
            out["clusters"].append((flat.T @ flat, int(np.count_nonzero(n_c > 0))))
        return out


def fe_covariance(
    final: dict,
    cov_type: str,
    ways: list[tuple[int, ...]] | None,
    *,
    effects: list[Effect],
    levels: list[int],
    active: np.ndarray,
    nobs: float,
    estimates_scale: bool,
    ssc: bool = True,
) -> np.ndarray:
    """Covariance of the active covariates (and NB2's log-alpha) of a fixed-effects fit.

    The bread is the inverse of the concentrated information ``S`` (the covariates' block of
    the inverse of the full information). Small-sample corrections are those of fixest and
    pyfixest (``ssc(k_adj=True, k_fixef="nonnested", G_adj=True, G_df="min")``), with
    ``K = k + sum(levels) - (n_effects - 1)``:

    * ``nonrobust``: ``S^-1 (N-1)/(N-K)``; with ``estimates_scale`` (the Gaussian): ``S^-1 SSR/(N-K)``;
    * ``HC1``/``HC0``: ``S^-1 M S^-1 N/(N-K)`` (HC0: no factor);
    * ``cluster``: ``S^-1 M_c S^-1 (N-1)/(N-K') G/(G-1)``, where ``K'`` leaves out the levels of
      effects nested in a clustering (whose dims include a clustering's dims) but counts one per
      such effect, and ``G`` is the smallest number of clusters among the clusterings;
      multi-way: inclusion-exclusion over the intersections, all with the same factor.

    ``ssc=False`` drops the factors (pyfixest's ``ssc(k_adj=False, G_adj=False)``; the
    Gaussian scale is then ``SSR/(N-1)``).
    """
    act = np.flatnonzero(active)
    S = final["info"][np.ix_(act, act)]
    Bread = linalg.inv(S)
    Bread = 0.5 * (Bread + Bread.T)
    N = float(nobs)
    k = act.size
    n_fe = len(effects)
    K = k + sum(levels) - (n_fe - 1)
    if cov_type == "nonrobust":
        if estimates_scale:  # the Gaussian
            return Bread * final["dev"] / ((N - K) if ssc else (N - 1))
        return Bread * ((N - 1) / (N - K) if ssc else 1.0)
    if cov_type in ("HC0", "HC1"):
        meat = final["meat"][np.ix_(act, act)]
        factor = N / (N - K) if (ssc and cov_type == "HC1") else 1.0
        return Bread @ meat @ Bread * factor
    ways = ways or []
    nested = [e for e in effects if any(set(w) <= set(e.axes) for w in ways)]
    k_nested = sum(lv for e, lv in zip(effects, levels, strict=True) if e in nested)
    K_c = K - k_nested + len(nested)
    G = min(n for (_, n), _sign in zip(final["clusters"], final["signs"], strict=True) if _sign > 0)
    if G < 2:
        raise ValueError(f"cluster-robust standard errors need at least 2 clusters, got {G}")
    meat = sum(
        sign * M[np.ix_(act, act)] for (M, _), sign in zip(final["clusters"], final["signs"], strict=True)
    )
    factor = (N - 1) / (N - K_c) * G / (G - 1) if ssc else 1.0
    return Bread @ meat @ Bread * factor
