"""The public entry point: :func:`fit`."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import xarray as xr

from ..frontend.fixed_effects import parse_effects
from ..frontend.formula import FittedFormula, apply_formula, is_formula
from ..frontend.objective import make_objective, run_setup
from ..frontend.panel import build_panel
from ..graph import passes as graph
from ..kernels import preload
from ..kernels.clustering import parse_clusters
from ..kernels.engines import resolve_engine
from ..kernels.families import Family
from ..kernels.inference import normalize_cov_type
from ..runtime.checkpoint import Checkpoint, model_fingerprint
from ..runtime.progress import Progress
from ..runtime.scheduling import compute_target, persist_decision, persist_panel
from .fe_results import FixedEffectsResults
from .registry import resolve_family, resolve_solver, unknown_arguments
from .results import FitSpec, GLMResults

__all__ = ["fit"]

log = logging.getLogger("daskglm")

#: the results class of each kind of objective (``objective.kind``)
RESULTS = {"glm": GLMResults, "fixed_effects": FixedEffectsResults}

# The first ``dg.fit`` (or ``from daskglm import fit``) imports this module: from here on, the
# compiled kernels of a float64 fit load in a background thread while the caller goes on
# (reading its data, say), instead of inside the first fit's setup pass (numba's target context
# and the cached sweep: ~0.3-0.5 s in a fresh process; :mod:`daskglm.kernels.preload`,
# ``DASKGLM_PRELOAD=0`` turns it off; not where numba's cache is cold: compiling takes 10-30 s,
# which a process that exits early would wait for).
preload.start(cached_only=True)


def _checkpoint(path, y, x, fam: Family, solver: str, setup, effects=None) -> Checkpoint | None:
    if path is None:
        return None
    layout = setup.layout
    description = {
        "y": y,
        "x": list(x) if isinstance(x, list | tuple) else x,
        "family": repr(fam),
        "solver": solver,
        "dims": list(layout.dims),
        "params": list(layout.param_names),
        "fe": [list(e.dims) for e in effects] if effects else None,
        "n_used": int(setup.n_used),
        "sums": {k: float(v) for k, v in sorted(setup.sums.items())},
    }
    return Checkpoint(os.fspath(path), model_fingerprint(description), description)


def fit(
    data,
    y: str,
    x: Sequence | str | None = None,
    family: str | Family = "gaussian",
    *,
    dims: Sequence[str] | None = None,
    exposure=None,
    offset=None,
    weights=None,
    intercept: bool = True,
    solver: str = "newton",
    cov_type: str | None = "nonrobust",
    cluster: str | Sequence[str] | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    missing: str = "raise",
    chunks=None,
    start_params: Sequence[float] | None = None,
    callback: Callable[[dict], None] | None = None,
    storage_options: dict | None = None,
    client=None,
    persist: str | bool = "auto",
    security=None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    fe=None,
    ssc: bool = True,
    drop_singletons: bool = True,
    engine: str | None = None,
    **solver_options,
) -> GLMResults:
    """Fit a generalized linear model to a panel without forming its design matrix.

    Parameters
    ----------
    data : xarray.Dataset or str or path, or a long table
        The panel, numpy- or dask-backed, or the path/URL of a zarr store. With ``dims=``, a
        long table instead (pandas/dask DataFrame, pyarrow Table, path/URL/glob of parquet or
        CSV files), turned into a panel by :func:`daskglm.from_long`.
    y : str
        The response; its dims are the panel dims. Or a formula in fixest's syntax,
        ``"flow ~ tariff + log(dist) + C(region) | exporter^year + importer^year"``, evaluated
        on the named-dim variables (:mod:`daskglm.frontend.formula`); it then gives ``x``, ``fe``, the
        intercept (``-1`` drops it) and ``offset(...)`` terms.
    x : list of str or DataArray
        Covariates, each spanning a subset of the panel dims, plus optionally one extra
        dim of columns (parameters ``name[label]``).
    family : str or Family
        ``"gaussian"``, ``"poisson"``, ``"binomial"``, ``"negative_binomial"``,
        ``"exponential"`` or an instance (``dg.Binomial(trials="n")``,
        ``dg.NegativeBinomial(alpha=None)``, ``dg.Exponential(event="d")``).
    exposure, offset, weights : str, DataArray or number, optional
        Exposure (enters as ``log``), offset(s) (a list is summed) and frequency weights,
        each over any subset of the panel dims.
    intercept : bool
        Add a constant named ``"Intercept"``.
    solver : str
        A name of :data:`daskglm.api.registry.SOLVERS`: ``"newton"`` (default), the inverse-free
        Newton ``"newton_schulz"`` (``H^-1 g`` by Newton-Schulz iterations), or the
        gradient-only ``"lbfgs"``, ``"gd"`` and ``"adam"``, which never solve with the
        Hessian (``gd``, ``adam`` and ``newton_schulz`` call no matrix solve, inverse or
        factorisation at all).
    cov_type : {"nonrobust", "robust", "HC0", "HC1", "cluster"} or None
        Covariance of the estimates, computed once at the end from the Hessian (also after a
        gradient-only fit); ``None`` skips standard errors and that Hessian.
    cluster : str, tuple of str or list
        With ``cov_type="cluster"``: the panel dims whose cells are the clusters (a dim, a
        tuple of dims, fixest's ``"exporter^importer"``), or a list (fixest's ``"a + b"``) for
        multi-way clustering (Cameron-Gelbach-Miller, the smallest number of clusters in the
        small-sample factor).
    tol : float, optional
        Convergence tolerance. Newton stops when its decrement (the deviance still to gain) is
        below ``tol`` (default 1e-8), then takes the final step; the gradient solvers when a
        diagonal estimate of it and the relative change of the log-likelihood both are
        (default 1e-12, which puts them within about 1e-6 standard errors of Newton).
    max_iter : int, optional
        Iteration limit (a fit that hits it warns); defaults to the solver's own: 100 for
        ``"newton"``, 1000 for ``"lbfgs"``, 2000 for ``"gd"``, 10000 for ``"adam"``.
    missing : {"raise", "drop"}
        What to do with NaN/inf inputs at cells where ``y`` is observed.
    chunks : optional
        Chunks of the full grid (any form dask accepts); defaults to ``y``'s own chunks, or
        about 2**19 cells per chunk for numpy-backed data.
    start_params : sequence of float, optional
        Starting values in the order of the internal parameter vector (``res.layout``).
    callback : callable, optional
        Called with each iteration's diagnostics row.
    storage_options : dict, optional
        Passed to fsspec when ``data`` is a URL (the workers open the store themselves).
    client : None, "local", str or distributed.Client
        Where the passes run: ``None`` the active ``distributed`` client, else the scheduler in
        dask's config (``DASK_SCHEDULER_ADDRESS``), else local threads; ``"local"`` a
        ``LocalCluster`` sized to the machine, closed afterwards; ``"tcp://..."`` /
        ``"tls://..."`` a running scheduler; a ``Client`` as is. See :mod:`daskglm.runtime.scheduling`.
    persist : {"auto", True, False}
        Keep the full-grid arrays in the workers' memory between passes. ``"auto"`` does when
        a cluster runs the fit, the data come from a store and fit in half the workers' memory
        limit; otherwise every pass streams chunks from the store. ``res.persisted`` and
        ``res.persist_reason`` record the choice.
    security : distributed.security.Security, optional
        TLS certificates for a ``tls://`` address (else dask's configuration is used).
    progress : bool, optional
        Per-iteration progress line (iteration, LL, step, gradient norm, passes, elapsed);
        ``None`` shows it when stderr is a terminal, ``False`` silences it.
    checkpoint : str or path, optional
        File to write the solver state to after every iteration (atomically). If it exists,
        the fit resumes from it; a checkpoint of another model or other data is refused. A fit
        whose cluster has had no workers for ``daskglm.no-workers-timeout`` (dask config,
        default 60 s) raises :class:`~daskglm.runtime.scheduling.ClusterLostError` naming this file.
    fe : str, sequence of str/tuple, optional
        Fixed effects: each entry a panel dim (``"exporter"``) or a tuple of dims (an
        interacted effect, fixest's ``"exporter^year"``); a string with ``+`` lists several
        (``"exporter^year + importer^year"``). The intercept is absorbed; covariates absorbed by
        the effects are dropped with a warning. Fitted by Newton with the effects concentrated
        out (conjugate gradients over the effects' grids, never a dense matrix over levels), or
        by ``"lbfgs"`` and ``"gd"`` with every effect level a parameter
        (:mod:`daskglm.frontend.fe_gradient`); ``"newton_schulz"`` and ``"adam"`` refuse ``fe=``.
        Levels whose estimate is infinite (all counts 0; all 0 or all trials; no event) and,
        with ``drop_singletons``, levels with one used cell are dropped with their cells,
        repeatedly, as fixest and pyfixest do (``res.n_dropped``). Returns
        :class:`~daskglm.api.fe_results.FixedEffectsResults`.
    ssc : bool
        With ``fe=``: apply fixest's and pyfixest's small-sample corrections to the covariance
        (their defaults; see :func:`daskglm.frontend.fixed_effects.fe_covariance`); ``False`` drops them.
    drop_singletons : bool
        With ``fe=``: drop levels with a single used cell (pyfixest's default
        ``fixef_rm="singleton"``; it changes standard errors, not estimates).
    engine : {"numba", "numpy"}, optional
        The per-chunk kernel of the evaluation passes: ``"numba"`` (a compiled sweep per slab,
        the default when numba imports) or ``"numpy"`` (the reference kernel, the same numbers
        to about 1e-15); ``None`` reads the environment variable ``DASKGLM_ENGINE``, else the
        default. ``res.engine`` records it. With ``fe=`` the effects' passes follow
        ``DASKGLM_ENGINE``.
    **solver_options
        Fields of the solver's config class: ``max_halvings``, ``qr``, ``qr_cond`` for Newton
        (``qr="auto"`` takes QR steps for ill-conditioned designs); ``step_size``,
        ``armijo``, ``max_backtracks`` for ``gd``; ``learning_rate``, ``beta1``, ``beta2``,
        ``epsilon``, ``decay`` for ``adam``; ``memory``, ``max_line_search`` for ``lbfgs``;
        ``refresh_window`` for the three gradient solvers; ``max_halvings``, ``ns_tol``,
        ``ns_max_iter`` for ``newton_schulz``.

    Returns
    -------
    GLMResults
    """
    # the arguments are checked before any data is read (a long table may take minutes)
    fam = resolve_family(family)
    spec = resolve_solver(solver)
    cov = normalize_cov_type(cov_type)
    engine = resolve_engine(engine)
    if cov == "cluster" and cluster is None:
        raise ValueError("cov_type='cluster' needs cluster=, the panel dim(s) defining the clusters")
    if cluster is not None and cov != "cluster":
        raise ValueError(f"cluster={cluster!r} is given but cov_type={cov_type!r}; use cov_type='cluster'")
    if tol is not None and not (tol > 0):
        raise ValueError(f"tol={tol!r} must be > 0")
    if max_iter is not None and int(max_iter) < 1:
        raise ValueError(f"max_iter={max_iter!r} must be >= 1")
    known = set(spec.config.__dataclass_fields__) - {"tol", "max_iter"}
    unknown = set(solver_options) - known
    if unknown:
        code = fit.__code__
        own = [a for a in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount] if a not in known]
        raise TypeError(unknown_arguments(sorted(unknown), own, spec.name, known))
    if max_iter is not None:
        solver_options["max_iter"] = int(max_iter)
    if tol is not None:
        solver_options["tol"] = float(tol)
    config = spec.config(**solver_options)

    if checkpoint is not None and start_params is not None:
        raise ValueError(
            "give either checkpoint= (which resumes from its saved state) or start_params=, not both"
        )
    formula = None
    if is_formula(y):  # "y ~ x + log(z) | fe": derived variables added to a copy of the data
        data, y, x, fe, offset, intercept = apply_formula(
            data, y, x=x, fe=fe, offset=offset, intercept=intercept, dims=dims,
            storage_options=storage_options, progress=progress,
            columns=(exposure, weights), family=family,
        )  # fmt: skip
        formula = FittedFormula(**data.attrs["daskglm_formula"])
    elif dims is not None:  # a long table, one row per observed cell
        from ..frontend.tables import from_long

        data = from_long(data, dims, y=y, storage_options=storage_options, progress=progress)
    else:
        from ..frontend.formula import is_long_table, needs_dims_error

        if is_long_table(data):  # DataFrames, pyarrow Tables, parquet/CSV paths
            raise needs_dims_error(data, fe if isinstance(fe, str) else None)
    named = [x] if isinstance(x, str) else list(x) if isinstance(x, list | tuple) else []
    if isinstance(y, str) and any(isinstance(v, str) and v == y for v in named):
        raise ValueError(
            f"the response {y!r} is also among the covariates: the response explaining itself makes "
            f"the estimates meaningless; remove {y!r} from "
            + ("the right-hand side of the formula" if formula is not None else "x=")
        )
    if not ssc and fe is None:
        raise ValueError(
            "ssc=False (--no-ssc) is for fixed-effects fits (fe=): it drops fixest's small-sample "
            "corrections there. Without fe= the covariances follow statsmodels, whose cluster-robust one "
            "always has G/(G-1) (n-1)/(n-k) (statsmodels' default) and whose HC0 has no factor: drop "
            "ssc=False, or use cov_type='HC0' for a sandwich without a small-sample factor"
        )
    fe_mode = spec.check_fixed_effects() if fe is not None else None
    if fe is not None and getattr(config, "qr", None) == "always":
        raise ValueError(
            "qr='always' (Newton steps from a QR factor of the expanded design) is not available with "
            "fe=: there Newton concentrates the effects out and solves the covariates' Schur complement. "
            "Drop qr=, or, for a badly conditioned covariate such as a raw calendar year or its "
            "interaction, centre it (its mean is absorbed by the effects)"
        )
    panel = build_panel(
        data,
        y,
        x,
        fam,
        offset=offset,
        exposure=exposure,
        weights=weights,
        intercept=intercept and fe is None,
        missing=missing,
        chunks=chunks,
        storage_options=storage_options,
    )
    ways = parse_clusters(cluster, panel.layout.dims) if cov == "cluster" else None
    effects = parse_effects(fe, panel.layout.dims, panel.sizes) if fe is not None else None
    from_store = not isinstance(data, xr.Dataset) or any(
        v.chunks is not None for v in data.data_vars.values()
    )
    with compute_target(client, security, checkpoint=checkpoint) as target:
        if engine == "numba" and target.client is None:
            # the specialisations this panel needs (float32 columns, effects), if not yet; on a
            # cluster the workers run the kernels (their plugin preloads them), not this process
            preload.start(
                preload.column_dtype(panel.layout, [a.dtype for a in panel.arrays]), effects=fe is not None
            )
        nbytes = sum(int(a.nbytes) for a in panel.arrays)
        persisted, persist_reason = persist_decision(persist, nbytes, target, from_store)
        work_panel, chunk_note = persist_panel(panel, target, chunks) if persisted else (panel, "")
        persist_reason += chunk_note
        if not persisted and from_store:
            arrays, held = graph.hold_small_arrays(panel.layout, panel.arrays)
            work_panel = replace(work_panel, arrays=arrays)
            if held:
                persist_reason += f"; the inputs off the full grid ({held / 1e6:.1f} MB) held in memory"
        log.info("daskglm: %s", persist_reason)
        counter = graph.PassCounter()
        setup = run_setup(work_panel, counter, engine)
        panel = replace(panel, layout=setup.layout)
        work_panel = replace(work_panel, layout=setup.layout)
        if setup.n_dropped:
            log.info("missing='drop': left out %d cells (%s)", setup.n_dropped, setup.dropped_by)
        objective = make_objective(work_panel, setup, counter, effects, drop_singletons, fe_mode, engine)
        ckpt = _checkpoint(checkpoint, y, x, fam, spec.name, setup, effects)
        resumed_from = None
        x0 = objective.start() if start_params is None else np.asarray(start_params, float)
        if ckpt is not None and (state := ckpt.load()) is not None:
            x0, resumed_from = state["params"], int(state["iteration"])
            log.info("daskglm: resuming from %s (iteration %d)", ckpt.path, resumed_from)
        if x0.shape != (objective.n_params,):
            raise ValueError(
                f"start_params has {x0.size} values; the model has {objective.n_params}: "
                f"{setup.layout.param_names}"
            )
        bar = Progress(spec.name, config.max_iter, progress)
        offset_it = resumed_from or 0

        def on_iteration(row: dict, params: np.ndarray) -> None:
            bar.update(row)
            if ckpt is not None and row["iteration"] > 0:
                ckpt.save(offset_it + row["iteration"], params, row["ll"])

        objective.on_iteration = on_iteration
        try:
            result = spec.run(objective, x0, config, callback)
        finally:
            bar.close()
        final = objective.final(
            result.params, ways, inference=cov is not None, scores=cov not in (None, "nonrobust")
        )
    V = None if cov is None else objective.covariance(final, cov, ways, ssc=ssc)
    spec_ = FitSpec(
        y=y,
        x=tuple(x) if isinstance(x, list | tuple) else ((x,) if x is not None else ()),
        offset=offset,
        exposure=exposure,
        weights=weights,
        intercept=intercept and effects is None,  # absorbed by the effects (predict on new data)
        solver=spec.name,
        tol=config.tol,
        max_iter=config.max_iter,
        fe=tuple(e.dims for e in effects) if effects else None,
        formula=formula,
    )
    res = RESULTS[objective.kind](
        **objective.results_options(ssc=ssc),
        panel=panel,
        setup=setup,
        spec=spec_,
        solver_result=result,
        final=final,
        cov=V,
        cov_type=cov,
        cluster=(cluster,) if isinstance(cluster, str) else cluster,
        counter=counter,
    )
    res.compute_target = target.description
    res.persisted, res.persist_reason = persisted, persist_reason
    res.resumed_from = resumed_from
    res.engine = engine
    if res.n_separated:
        warnings.warn(
            f"complete or quasi-complete separation: {res.n_separated} used cells have "
            f"{fam.separation_wording}; "
            "the maximum-likelihood estimate does not exist and some coefficients diverge. "
            "Drop or merge the covariates (or levels) that predict those cells perfectly",
            SeparationWarning,
            stacklevel=2,
        )
    return res


class SeparationWarning(UserWarning):
    """Fitted probabilities of 0 or 1, or fitted means of 0 at zero counts: the MLE does not exist."""
