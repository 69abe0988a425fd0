"""The bridge between a :class:`~daskglm.frontend.panel.Panel` and the solvers.

:class:`PanelObjective` turns "evaluate the log-likelihood at these parameters" into one pass
over the panel (one ``dask.compute``); :func:`run_setup` is the validating first pass and
:meth:`PanelObjective.final` the last one, at the estimates, for standard errors and diagnostics.
"""

from __future__ import annotations

import numpy as np

from ..graph import passes as graph
from ..graph.accurate import accurate_graph, accurate_hessian_graph
from ..graph.effects import FixedEffectPasses
from ..graph.qr import qr_graph
from ..kernels.accurate import accurate_hessian_unpack, accurate_unpack
from ..kernels.checks import SetupInfo, intercept_position, interpret_setup, needs_orthogonal_check
from ..kernels.chunk import finalize_eval, setup_packer
from ..kernels.clustering import combine_cluster_meats, intersections
from ..kernels.inference import covariance
from ..kernels.qr import TSQR, qr_grad_size, qr_unpack, qr_width
from ..solvers.base import Evaluation
from ..solvers.newton import newton_direction
from .fe_gradient import FixedEffectsGradientObjective
from .fixed_effects import FixedEffectsObjective, drop_degenerate_levels
from .panel import Panel

__all__ = ["FE_OBJECTIVES", "PanelObjective", "make_objective", "run_setup", "start_params"]


def run_setup(panel: Panel, counter: graph.PassCounter, engine: str | None = None) -> SetupInfo:
    """The first pass: validate the data and gather sums, constants and the Gram matrix."""
    layout = panel.layout
    (vec,) = graph.run(counter, "setup", graph.setup_graph(layout, panel.arrays, engine))
    stats = setup_packer(layout).unpack(vec)
    if needs_orthogonal_check(stats["gram"], intercept_position(layout)):
        # the Gram matrix cannot tell a dependence from ill-conditioning: one more pass for the
        # R factor of the weighted design, whose singular values can (daskglm.kernels.qr)
        params = np.zeros(layout.n_params)
        (rvec,) = graph.run(counter, "setup-qr", qr_graph(layout, panel.arrays, params, "design"))
        stats["r_factor"] = qr_unpack(rvec, qr_width(layout, "design")).r
    return interpret_setup(layout, stats)


def start_params(setup: SetupInfo) -> np.ndarray:
    """Starting values: the intercept-only estimate for the intercept, zeros elsewhere."""
    layout = setup.layout
    b0, extra = layout.family.start(setup.sums)
    beta = np.zeros(layout.n_beta)
    for block, sl in zip(layout.blocks, layout.block_slices, strict=True):
        if block.intercept:
            beta[sl] = b0
    return np.concatenate([beta, extra])


class PanelObjective:
    """Log-likelihood of the model over a panel; each call is one pass over the data."""

    def __init__(self, panel: Panel, setup: SetupInfo, counter: graph.PassCounter, engine: str | None = None):
        self.panel = panel
        #: the per-chunk kernel of the evaluation passes (:func:`daskglm.kernels.engines.resolve_engine`)
        self.engine = engine
        self.layout = setup.layout
        self.setup = setup
        self.counter = counter
        self.n_params = self.layout.n_params
        #: graph optimization only pays when the passes read their inputs (from a store)
        self.optimize = not graph.materialized(panel.arrays)
        self.n_beta = self.layout.n_beta
        icpt = [
            sl.start
            for b, sl in zip(self.layout.blocks, self.layout.block_slices, strict=True)
            if b.intercept
        ]
        #: position of the intercept in the parameter vector (None without one)
        self.intercept_index: int | None = icpt[0] if icpt else None

    @property
    def passes(self) -> int:
        return self.counter.passes

    def _evaluation(self, params: np.ndarray, st: dict) -> Evaluation:
        ll = st["ll"]
        dev = st["dev"] if self.setup.ll_sat is None else 2.0 * (self.setup.ll_sat - ll)
        return Evaluation(np.array(params), ll, st["grad"], st.get("hess"), dev)

    def __call__(self, params: np.ndarray, *, hessian: bool = True) -> Evaluation:
        g = graph.eval_graph(self.layout, self.panel.arrays, params, hessian=hessian, engine=self.engine)
        (vec,) = graph.run(self.counter, "eval", g, optimize=self.optimize)
        return self._evaluation(params, finalize_eval(self.layout, vec, hessian=hessian))

    def dispersion(self, e: Evaluation) -> float:
        """Gaussian fits run with sigma = 1: divide LL differences by the MLE of sigma^2.

        Floored at 1e-16 of the mean square of y: below that the residuals are float64
        rounding (an exact fit, such as NIST's Wampler1), and dividing by them would keep the
        Newton decrement from ever looking small."""
        sw = self.setup.sum_weights
        return self.layout.family.dispersion(e.deviance, sw, 1e-16 * self.setup.sums["swy2"] / sw)

    @property
    def qr_cond(self) -> float:
        """Condition number of the equilibrated Hessian above which Newton switches to QR steps
        by default: 1e6 for the Gaussian (its residual is exact, so the extended-precision
        refinement buys digits on large-residual fits such as NIST's Wampler5, and a linear fit
        takes two or three passes), 1e10 for the other families (the QR pass forms the design
        of each chunk, several times the cost of a Hessian pass; below 1e10 the normal
        equations refined by the Newton iterations are accurate to 1e-6 or better)."""
        return 1e6 if self.layout.family.linear else 1e10

    def _unpack_qr(self, vec) -> TSQR:
        return qr_unpack(vec, qr_width(self.layout, "newton"), qr_grad_size(self.layout, "newton"))

    def qr_evaluation(self, params: np.ndarray) -> tuple[Evaluation, TSQR | None]:
        """One pass: the evaluation with the Hessian, and the :class:`~daskglm.kernels.qr.TSQR` of
        ``sqrt(W) [X | r]`` at ``params`` (:mod:`daskglm.kernels.qr`), from which the Newton step is
        solved without squaring the condition number; ``None`` for it where some cell has
        ``W < 0``. From the first call on, :meth:`final` also returns ``R`` (``r_factor``) for
        the inverse information."""
        self.orthogonal = True
        g = graph.eval_graph(self.layout, self.panel.arrays, params, hessian=True, engine=self.engine)
        q = qr_graph(self.layout, self.panel.arrays, params, "newton")
        vec, qvec = graph.run(self.counter, "eval", g, q, optimize=self.optimize)
        factor = self._unpack_qr(qvec)
        e = self._evaluation(params, finalize_eval(self.layout, vec, hessian=True))
        return e, (factor if factor.n_negative == 0 else None)

    def accurate_evaluation(self, params: np.ndarray) -> Evaluation | None:
        """One pass: the evaluation without the Hessian, its gradient replaced by ``X' w (y -
        offset - X b)`` summed in double-double (:mod:`daskglm.kernels.accurate`), for the gradient
        solvers' and Newton-Schulz's last step. Gaussian family only, as Newton's
        extended-precision gradient (its large residuals are where a float64 gradient's
        rounding moves the estimates; :attr:`~daskglm.kernels.families.Family.linear`); ``None`` (and no
        pass) for the other families."""
        if not self.layout.family.linear:
            return None
        g = graph.eval_graph(self.layout, self.panel.arrays, params, hessian=False, engine=self.engine)
        a = accurate_graph(self.layout, self.panel.arrays, params)
        vec, avec = graph.run(self.counter, "eval", g, a, optimize=self.optimize)
        e = self._evaluation(params, finalize_eval(self.layout, vec, hessian=False))
        e.grad = accurate_unpack(avec, self.layout.n_beta)
        return e

    def accurate_hessian(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The Hessian ``-X' w X`` summed in double-double as (hi, lo) matrices (one pass, the
        first call only: it does not depend on the parameters), for the inverse-free
        preconditioner where the float64 Hessian is too ill-conditioned (NIST's Filip).
        Gaussian family only; ``None`` (and no pass) for the other families."""
        if not self.layout.family.linear:
            return None
        if getattr(self, "_accurate_hessian", None) is None:
            h = accurate_hessian_graph(self.layout, self.panel.arrays)
            (vec,) = graph.run(self.counter, "eval", h, optimize=self.optimize)
            self._accurate_hessian = accurate_hessian_unpack(vec, self.layout.n_beta)
        return self._accurate_hessian

    def gradient_rounding(self, e: Evaluation) -> np.ndarray | None:
        """The size of the float64 gradient's rounding error at ``e``, per coefficient, from
        which a solver judges whether :meth:`accurate_evaluation` is worth its pass (no pass
        here): ``eps sqrt(sum w x_j^2) (sqrt(sum w r^2) + sqrt(sum w y^2))``, i.e.
        Cauchy-Schwarz on the products' ``|X|' |w r|`` and on the residuals' own rounding
        (about ``eps |y|`` a cell). Not a worst-case bound (that has a further ``log2(n)``
        for pairwise sums), but above the error seen: on NIST's Wampler1-5, 10-1e5 times it;
        on n random cells about ``sqrt(n)`` times it, as the cells' roundings partly cancel.
        ``None`` where :meth:`accurate_evaluation` is (other families)."""
        if not self.layout.family.linear:
            return None
        scale = np.sqrt(max(e.deviance, 0.0)) + np.sqrt(self.setup.sums["swy2"])
        col = np.sqrt(np.maximum(np.diag(self.setup.gram), 0.0))
        return np.finfo(np.float64).eps * col * scale

    def direction(self, e: Evaluation) -> tuple[np.ndarray, bool]:
        """The Newton step from the evaluation's gradient and Hessian."""
        return newton_direction(e.grad, e.hess)

    def start(self) -> np.ndarray:
        """Default starting values (:func:`start_params`)."""
        return start_params(self.setup)

    def covariance(self, final: dict, cov_type: str, ways=None, *, ssc: bool = True) -> np.ndarray:
        """Covariance of all parameters from :meth:`final`'s statistics (statsmodels'
        conventions, :func:`daskglm.kernels.inference.covariance`; ``ssc`` is for fixed-effects fits)."""
        layout = self.layout
        scale = layout.family.scale(final["dev"], self.setup.sum_weights - layout.n_beta)
        return covariance(
            final["hess"],
            cov_type,
            scale=scale,
            meat=final.get("meat"),
            cluster_meat=final.get("cluster_meat"),
            n_clusters=final.get("n_clusters"),
            nobs=self.setup.sum_weights,
            k=layout.n_params,
            r_factor=final.get("r_factor"),
        )

    #: which results class the public API wraps the fit in
    kind = "glm"

    def results_options(self, **_) -> dict:
        """Extra keyword arguments of the results class."""
        return {}

    def final(
        self,
        params: np.ndarray,
        ways: list[tuple[int, ...]] | None = None,
        *,
        inference: bool = True,
        scores: bool = True,
    ) -> dict:
        """Everything needed for inference at ``params``, in one pass.

        Returns the unpacked final statistics (``ll``, ``grad``, ``dev``, ``n_separated`` and,
        with ``inference``, ``hess`` and ``meat``) and, with cluster ``ways`` (a list of
        cluster axis sets; several is multi-way clustering), ``cluster_meat`` (combined over
        the intersections by inclusion-exclusion) and ``n_clusters`` (the smallest number
        of clusters of the ways). ``inference=False`` skips the P x P matrices
        (``cov_type=None``); ``scores=False`` skips the HC0 meat (nonrobust standard errors).
        """
        meat = scores
        graphs = [
            graph.eval_graph(
                self.layout,
                self.panel.arrays,
                params,
                hessian=inference,
                final=True,
                engine=self.engine,
                meat=meat,
            )
        ]
        parts = intersections(ways) if ways else []
        for axes, _ in parts:
            graphs += list(graph.cluster_graph(self.layout, self.panel.arrays, params, axes))
        # R for the inverse information, in the same pass, when the solver used QR steps or
        # the design was ill-conditioned at the setup (gradient-only solvers)
        orthogonal = inference and (getattr(self, "orthogonal", False) or self.setup.r_factor is not None)
        if orthogonal:
            graphs.append(qr_graph(self.layout, self.panel.arrays, params, "newton"))
        out = graph.run(self.counter, "final", *graphs, optimize=self.optimize)
        st = finalize_eval(self.layout, out[0], hessian=inference, final=True, meat=meat)
        if parts:
            meats = [np.asarray(out[1 + 2 * j]) for j in range(len(parts))]
            counts = [int(out[2 + 2 * j]) for j in range(len(parts))]
            st["cluster_meat"] = combine_cluster_meats(meats, [sign for _, sign in parts])
            st["n_clusters"] = min(n for n, (_, sign) in zip(counts, parts, strict=True) if sign > 0)
        if orthogonal:
            factor = self._unpack_qr(out[-1])
            if factor.n_negative == 0:
                st["r_factor"] = factor.r[: self.n_beta, : self.n_beta]
        return st


#: the fixed-effects objective for each :attr:`~daskglm.api.registry.SolverSpec.fixed_effects` mode
FE_OBJECTIVES = {"concentrated": FixedEffectsObjective, "parameters": FixedEffectsGradientObjective}


def make_objective(
    panel: Panel,
    setup: SetupInfo,
    counter: graph.PassCounter,
    effects=None,
    singletons=True,
    fe_mode: str = "concentrated",
    engine: str | None = None,
):
    """The objective of the model: :class:`PanelObjective`, or with ``effects`` the objective
    of :data:`FE_OBJECTIVES` for the solver's ``fe_mode`` (its registry entry's
    ``fixed_effects``: Newton's concentrated step, or every level a parameter for the gradient
    solvers), after dropping degenerate levels, which costs a few passes. ``engine`` picks the
    evaluation kernel of the passes without effects (``"numba"`` or ``"numpy"``; the effects'
    passes follow ``DASKGLM_ENGINE``)."""
    if not effects:
        return PanelObjective(panel, setup, counter, engine)
    if fe_mode not in FE_OBJECTIVES:
        raise ValueError(f"fe_mode={fe_mode!r}: use one of {', '.join(map(repr, FE_OBJECTIVES))}")
    passes = FixedEffectPasses(setup.layout, panel.arrays, panel.chunks, effects, counter)
    drops = drop_degenerate_levels(passes, singletons)
    return FE_OBJECTIVES[fe_mode](panel, setup, effects, counter, passes, drops)
