"""The result of a fit, with statsmodels' names and meanings.

Statistics that need more passes over the data (the null model's log-likelihood, NB2's
likelihood-ratio test against Poisson) are computed on first access and cached.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property, partial

import numpy as np
import pandas as pd
import xarray as xr
from scipy import special

from ..frontend.objective import PanelObjective, run_setup, start_params
from ..frontend.panel import Panel, build_panel, open_data
from ..graph import passes as graph
from ..kernels.checks import SetupInfo
from ..kernels.chunk import predict_chunk
from ..solvers.newton import NewtonConfig, newton

__all__ = ["GLMResults", "FitSpec"]


def _columns(*cells: str, width: int = 40) -> str:
    """``cells`` in columns ``width`` characters apart, at least two spaces between them."""
    line = ""
    for i, cell in enumerate(cells):
        if i:
            line += " " * max(2, i * width - len(line))
        line += cell
    return line


@dataclass(frozen=True)
class FitSpec:
    """The user's model specification, kept for predictions and derived fits."""

    y: str
    x: tuple
    offset: object
    exposure: object
    weights: object
    intercept: bool
    solver: str
    tol: float
    max_iter: int
    fe: tuple | None = None
    formula: object = None  # a daskglm.frontend.formula.FittedFormula for formula fits


class GLMResults:
    """Estimates, inference and diagnostics of a fitted panel GLM.

    Attributes mirror statsmodels' ``GLMResults``: ``params``, ``bse``, ``tvalues``,
    ``pvalues`` (normal reference distribution), ``llf``, ``deviance``, ``aic``, ``bic``,
    ``nobs`` (used cells), ``df_resid`` (sum of weights minus the number of coefficients),
    ``scale``; plus ``converged``, ``n_iter``, ``history``, ``passes``, and for NB2 ``alpha``,
    ``alpha_bse``.
    """

    def __init__(
        self,
        *,
        panel: Panel,
        setup: SetupInfo,
        spec: FitSpec,
        solver_result,
        final: dict,
        cov: np.ndarray | None,
        cov_type: str | None,
        cluster: tuple[str, ...] | None,
        counter: graph.PassCounter,
    ):
        self._panel = panel
        self._setup = setup
        self._spec = spec
        self._final = final
        self._counter = counter
        self.layout = setup.layout
        self.family = self.layout.family
        self.cov_type = cov_type
        self.cluster = cluster
        self.converged = bool(solver_result.converged)
        self.n_iter = int(solver_result.n_iter)
        self.solver = solver_result.solver
        self.message = solver_result.message
        self.history = pd.DataFrame(solver_result.history).set_index("iteration")
        self._params_all = np.asarray(solver_result.params, dtype=np.float64)
        self._cov_all = cov
        nb = self.layout.n_beta
        names = self.layout.param_names[:nb]
        self._order = [names.index(n) for n in panel.user_order]
        self.param_names = list(panel.user_order)
        self.nobs = int(setup.n_used)
        self.n_dropped = int(setup.n_dropped)
        self.dropped_by = dict(setup.dropped_by)
        self.sum_weights = float(setup.sum_weights)
        self.k_params = nb
        self.df_model = nb - (1 if any(b.intercept for b in self.layout.blocks) else 0)
        self.df_resid = self.sum_weights - nb
        self.n_separated = int(final.get("n_separated", 0))
        self.n_clusters = final.get("n_clusters")
        # the solvers see the kernel log-likelihood; report the full one, as llf does
        h = self.history
        h["ll"] = [self._full_ll(ll, dev) for ll, dev in zip(h["ll"], h["deviance"], strict=True)]

    # ------------------------------------------------------------------ estimates
    @property
    def passes(self) -> int:
        """Passes over the data so far (including any for lazily computed statistics)."""
        return self._counter.passes

    @cached_property
    def params(self) -> pd.Series:
        nb = self.layout.n_beta
        return pd.Series(self._params_all[:nb][self._order], index=self.param_names, name="coef")

    def cov_params(self) -> pd.DataFrame:
        """Covariance of the coefficients (NB2's log-alpha is left out; see ``alpha_bse``)."""
        if self._cov_all is None:
            raise ValueError("standard errors were not computed (cov_type=None)")
        nb = self.layout.n_beta
        V = self._cov_all[:nb, :nb][np.ix_(self._order, self._order)]
        return pd.DataFrame(V, index=self.param_names, columns=self.param_names)

    @cached_property
    def bse(self) -> pd.Series:
        return pd.Series(
            np.sqrt(np.diag(self.cov_params().to_numpy())), index=self.param_names, name="std err"
        )

    @cached_property
    def tvalues(self) -> pd.Series:
        return (self.params / self.bse).rename("z")

    @cached_property
    def pvalues(self) -> pd.Series:
        return pd.Series(
            2 * special.ndtr(-np.abs(self.tvalues.to_numpy())), index=self.param_names, name="P>|z|"
        )

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Normal-based confidence intervals at level ``1 - alpha``."""
        q = special.ndtri(1 - alpha / 2)  # the normal quantile, as scipy.stats.norm.ppf
        lo, hi = self.params - q * self.bse, self.params + q * self.bse
        return pd.DataFrame({0: lo, 1: hi})

    # ------------------------------------------------------------------ NB2 dispersion
    @property
    def _extra(self) -> slice:
        """Where the family's extra parameters sit in the parameter vector (after the
        coefficients; before any effect levels)."""
        nb = self.layout.n_beta
        return slice(nb, nb + self.family.n_extra)

    @property
    def alpha(self) -> float | None:
        """NB2 dispersion (estimated or fixed): the family's ancillary parameter
        (:meth:`~daskglm.kernels.families.Family.ancillary`); ``None`` for families without one."""
        return self.family.ancillary(self._params_all[self._extra])

    @property
    def alpha_bse(self) -> float | None:
        """Standard error of alpha (delta method from log alpha); ``None`` if fixed."""
        if self._cov_all is None or not self.family.n_extra:
            return None
        sl = self._extra
        return self.family.ancillary_se(self._params_all[sl], self._cov_all[sl, sl])

    # ------------------------------------------------------------------ fit statistics
    @property
    def deviance(self) -> float:
        return float(self._final["dev"])

    @property
    def scale(self) -> float:
        """The estimated scale (Gaussian: ``SSR / df_resid``); 1 for families without one."""
        return float(self.family.scale(self.deviance, self.df_resid))

    @property
    def _ll_const(self) -> float:
        """The parameter-free part of the log-likelihood over the used cells."""
        return self._setup.ll_const

    def _full_ll(self, kernel_ll: float, deviance: float) -> float:
        return self.family.full_loglike(kernel_ll, deviance, self.sum_weights, self._ll_const)

    @property
    def llf(self) -> float:
        return float(self._full_ll(self._final["ll"], self.deviance))

    @property
    def _k_ic(self) -> int:
        return self.layout.n_params

    @property
    def aic(self) -> float:
        return -2 * self.llf + 2 * self._k_ic

    @property
    def bic(self) -> float:
        return -2 * self.llf + np.log(self.sum_weights) * self._k_ic

    def _submodel(self, panel: Panel) -> tuple[SetupInfo, dict, bool]:
        """Fit a derived model by Newton (extra passes); returns setup, final stats, converged."""
        setup = run_setup(panel, self._counter)
        obj = PanelObjective(panel, setup, self._counter)
        res = newton(
            obj,
            start_params(setup),
            NewtonConfig(tol=self._spec.tol) if self._spec.solver == "newton" else NewtonConfig(),
        )
        return setup, obj.final(res.params), res.converged

    @cached_property
    def _null(self):
        return self._submodel(self._panel.without_covariates())

    @cached_property
    def llnull(self) -> float:
        """Log-likelihood of the intercept-only model (same offsets, exposure, weights)."""
        setup, final, _ = self._null
        return float(self.family.full_loglike(final["ll"], final["dev"], self.sum_weights, setup.ll_const))

    @cached_property
    def null_deviance(self) -> float:
        """Deviance of the intercept-only model (NB2: at this fit's alpha, as R's glm.nb)."""
        if self.family.n_extra:
            fixed = self.family.fixed_at(self._params_all[self._extra])
            panel = self._panel.without_covariates().with_family(fixed)
            return float(self._submodel(panel)[1]["dev"])
        return float(self._null[1]["dev"])

    @cached_property
    def pseudo_rsquared(self) -> float:
        """McFadden's pseudo R-squared, ``1 - llf / llnull``."""
        return 1.0 - self.llf / self.llnull

    @cached_property
    def lr_test_poisson(self) -> tuple[float, float]:
        """NB2 only: likelihood-ratio test of alpha = 0 against the Poisson model.

        Returns ``(chibar2, p_value)`` with the boundary-corrected p-value
        ``0.5 * P(chi2_1 > chibar2)`` (Stata's ``nbreg`` convention). Costs a Poisson fit.
        """
        restricted = self.family.restricted()
        if restricted is None:
            raise AttributeError("lr_test_poisson is defined for the negative binomial family only")
        panel = self._panel.with_family(restricted)
        setup, final, _ = self._submodel(panel)
        llp = restricted.full_loglike(final["ll"], final["dev"], setup.sum_weights, setup.ll_const)
        lr = max(2 * (self.llf - llp), 0.0)
        return float(lr), float(0.5 * special.chdtrc(1, lr))  # chi2(1).sf, as scipy.stats

    # ------------------------------------------------------------------ predictions
    def predict(self, data=None, which: str = "mean") -> xr.DataArray | pd.Series:
        """Predictions over the panel dims (lazy), or at the rows of a long table.

        Parameters
        ----------
        data : Dataset, zarr path, or a long table, optional
            New data holding the covariates (and offset/exposure variables) by the same
            names; the fitted panel when omitted. A long table (pandas DataFrame or pyarrow
            Table, one row per cell) has the fit's panel dims as key columns (or index levels)
            and the columns the covariates are made of; it is turned into a panel by
            :func:`daskglm.from_long` and the predictions are returned row by row.
        which : {"mean", "linear"}
            ``"linear"``: eta (offsets included). ``"mean"``: the inverse link of eta: the
            mean (Gaussian, Poisson, NB2), the success probability (binomial), the hazard
            rate (exponential).

        Returns
        -------
        DataArray or Series
            Dask-backed, over the panel dims; NaN where an input is missing. For a long
            table: a Series (computed) aligned with its rows (its index, for a DataFrame).
        """
        if which not in ("mean", "linear"):
            raise ValueError(f"which={which!r}: use 'mean' or 'linear'")
        from ..frontend.formula import is_long_table

        if data is not None and is_long_table(data):
            return self._predict_rows(data, which)
        return self._predict_grid(None if data is None else open_data(data), which)

    def _predict_grid(self, ds: xr.Dataset | None, which: str) -> xr.DataArray:
        """Lazy predictions over the grid of ``ds`` (the fitted panel when ``None``)."""
        panel = self._panel if ds is None else self._prediction_panel(ds)
        func = partial(predict_chunk, panel.layout, self._params_all, which)
        arr = graph.predict_graph(func, panel.layout, panel.arrays)
        return xr.DataArray(arr, dims=self.layout.dims, coords=panel.coords, name=f"predicted_{which}")

    def _predict_rows(self, table, which: str) -> pd.Series:
        """Predictions at the rows of a long table (pandas DataFrame or pyarrow Table)."""
        import pyarrow as pa

        from ..frontend.tables import from_long

        dims = list(self.layout.dims)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if isinstance(table, pa.Table):
            frame = table.select([d for d in dims if d in table.column_names]).to_pandas()
        elif isinstance(table, pd.DataFrame):
            frame = table.reset_index(level=[d for d in dims if d in table.index.names and d not in table])
        else:
            raise TypeError(
                f"predict() takes a pandas DataFrame or pyarrow Table as a long table, not "
                f"{type(table).__name__}: read it first, or build the panel with daskglm.from_long"
            )
        lacking = [d for d in dims if d not in frame.columns]
        if lacking:
            raise ValueError(
                f"the table given to predict() lacks the key column(s) {lacking}: the fit's panel dims are "
                f"{dims}, and each row of new data names its cell by them"
            )
        s = self._spec
        categorical: list[str] = []
        derived: set[str] = set()
        if s.formula is not None:
            values, categorical = s.formula.columns()
            derived = s.formula.derived()
        else:
            values = [v for v in s.x if isinstance(v, str)]
        for extra in (s.offset, s.exposure):
            for v in extra if isinstance(extra, list | tuple) else [extra]:
                if isinstance(v, str) and v not in values and v not in derived:
                    values.append(v)
        values = [v for v in values if v not in dims]
        have = set(table.column_names) if isinstance(table, pa.Table) else set(map(str, table.columns))
        absent = [v for v in values if v not in have]
        if absent:
            raise ValueError(
                f"the table given to predict() lacks the column(s) {absent}, which the fit's covariates, "
                f"offset or exposure are made of; it needs {values} besides the keys {dims}"
            )
        # every column on the full grid: a covariate constant over the few rows of new data is
        # still a covariate of the fit (from_long would place it on fewer dims, or none)
        with warnings.catch_warnings():  # a few rows of new data make a sparse grid: no advice on dims
            warnings.filterwarnings("ignore", message=r"the .* grid has .* cells for", category=UserWarning)
            ds = from_long(table, dims, values=values, y=values, categorical=categorical, progress=False)
        grid = self._predict_grid(ds, which)
        at = {d: xr.DataArray(frame[d].to_numpy(), dims="row") for d in dims}
        out = np.asarray(grid.sel(at).values, dtype=np.float64)
        index = table.index if isinstance(table, pd.DataFrame) else None
        return pd.Series(out, index=index, name=f"predicted_{which}")

    def _prediction_panel(self, ds: xr.Dataset) -> Panel:
        dims = self.layout.dims
        missing = [d for d in dims if d not in ds.sizes]
        if missing:
            raise ValueError(f"data for predict() lacks panel dim(s) {missing}; it needs {list(dims)}")
        shape = tuple(int(ds.sizes[d]) for d in dims)
        coords = {d: ds.indexes[d] for d in dims if d in ds.indexes}
        template = xr.DataArray(graph.lazy_zeros(shape), dims=dims, coords=coords, name="__template__")
        s = self._spec
        x = list(s.x)
        if s.formula is not None:  # the formula's covariates, built from the new data
            ds, x = s.formula.transform(ds)
        panel = build_panel(
            ds,
            template,
            x,
            self.family,
            offset=s.offset,
            exposure=s.exposure,
            intercept=s.intercept,
            with_aux=False,
        )
        return panel

    # ------------------------------------------------------------------ output
    def to_xarray(self) -> xr.Dataset:
        """Estimates as labelled arrays: one variable per covariate, over ``statistic``
        (coef, std err, z, P>|z|, [0.025, 0.975]) and the covariate's feature dim, if any."""
        table = self._table()
        out = {}
        for block in self.layout.blocks:
            for k in block.sources or ((),):
                if block.intercept:
                    out["Intercept"] = xr.DataArray(table.loc["Intercept"].to_numpy(), dims=["statistic"])
                    continue
                spec = self.layout.args[k]
                cols = [c for c in self.param_names if c == spec.name or c.startswith(spec.name + "[")]
                vals = table.loc[cols].to_numpy()
                if spec.n_features is None:
                    out[spec.name] = xr.DataArray(vals[0], dims=["statistic"])
                else:
                    labels = [c[len(spec.name) + 1 : -1] for c in cols]
                    out[spec.name] = xr.DataArray(
                        vals.T, dims=["statistic", "feature"], coords={"feature": labels}
                    )
        return xr.Dataset(out, coords={"statistic": list(table.columns)})

    def _table(self) -> pd.DataFrame:
        ci = self.conf_int()
        return pd.DataFrame(
            {
                "coef": self.params,
                "std err": self.bse,
                "z": self.tvalues,
                "P>|z|": self.pvalues,
                "[0.025": ci[0],
                "0.975]": ci[1],
            }
        )

    def _header(self, title: str, extra: list[str]) -> list[str]:
        """The summary's opening lines (shared with the fixed-effects results); ``extra`` goes
        after the family line. Two columns, the right one at column 40 or, after a long value,
        two spaces on: values never run into the next label."""
        return [
            f"{title:^78}",
            "=" * 78,
            _columns(f"Family: {self.family!r}", f"Panel dims: {dict(self._panel.sizes)}"),
            *extra,
            _columns(
                f"Solver: {self.solver}",
                f"converged: {self.converged}",
                f"iterations: {self.n_iter}",
                f"passes: {self.passes}",
                width=20,
            ),
            _columns(
                f"Cells used: {self.nobs}",
                f"Sum of weights: {self.sum_weights:.6g}",
                f"Df resid: {self.df_resid:.6g}",
                width=26,
            ),
            _columns(f"Log-likelihood: {self.llf:.6f}", f"Deviance: {self.deviance:.6g}"),
            _columns(f"LL-Null: {self.llnull:.6f}", f"Pseudo R2 (McFadden): {self.pseudo_rsquared:.4f}"),
            _columns(f"AIC: {self.aic:.6f}", f"BIC: {self.bic:.6f}"),
        ]

    def summary(self) -> str:
        """A readable table of the fit (computes the null model on first call)."""
        fam = self.family
        lines = self._header("daskglm results", [])
        lines.append(
            f"Covariance: {self.cov_type}"
            + (f" by {self.cluster} ({self.n_clusters} clusters)" if self.cov_type == "cluster" else "")
        )
        if self.n_dropped:
            lines.append(f"Dropped cells (missing='drop'): {self.n_dropped} ({self.dropped_by})")
        lines.append("-" * 78)
        if self.cov_type is not None:
            with pd.option_context("display.width", 120, "display.max_rows", 500):
                lines.append(self._table().to_string(float_format=lambda v: f"{v:.6g}"))
        else:
            lines.append(self.params.to_string())
        if fam.ancillary_name is not None:
            name = fam.ancillary_name
            lines.append("-" * 78)
            if fam.n_extra:
                se = f" (std err {self.alpha_bse:.6g})" if self.alpha_bse is not None else ""
                lines.append(f"{name}: {self.alpha:.6g}{se}")
                restricted = fam.restricted()
                if restricted is not None:
                    lr, p = self.lr_test_poisson
                    lines.append(
                        f"LR test of {name}=0 (vs {type(restricted).__name__}): "
                        f"chibar2(01) = {lr:.4f}, Prob >= chibar2 = {p:.4g}"
                    )
            else:
                lines.append(f"{name} fixed at {self.alpha:g}")
        if self.n_separated:
            lines.append(f"Warning: {self.n_separated} cells have fitted means on the boundary (separation)")
        if not self.converged:
            lines.append(f"Warning: not converged: {self.message}")
        lines.append("=" * 78)
        return "\n".join(lines)

    # ------------------------------------------------------------------ tables and plots
    def tidy(self, alpha: float = 0.05) -> pd.DataFrame:
        """Estimate, std error, statistic, p-value and confidence interval per term
        (:func:`daskglm.api.report.tidy`)."""
        from .report import tidy

        return tidy(self, alpha)

    def plot(self, path=None, **kwargs):
        """A coefficient plot with confidence intervals (:func:`daskglm.api.report.coefplot`);
        needs matplotlib (``pip install "daskglm[plot]"``). Returns the Figure."""
        from .report import coefplot

        return coefplot([self], path=path, **kwargs)

    def plot_convergence(self, path=None, **kwargs):
        """Log-likelihood, gradient norm and step size per iteration
        (:func:`daskglm.api.report.plot_convergence`). Returns the Figure."""
        from .report import plot_convergence

        return plot_convergence(self, path=path, **kwargs)

    def __repr__(self) -> str:
        return f"<GLMResults {self.family!r}, {len(self.param_names)} coefficients, llf={self.llf:.6g}>"
