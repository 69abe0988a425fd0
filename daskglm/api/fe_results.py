"""Results of a fit with fixed effects: the covariates' estimates, the effects as labelled arrays.

Public-API layer. :class:`FixedEffectsResults` keeps the names and meanings of
:class:`~daskglm.api.results.GLMResults`; what differs is counted and reported here: the effects
(``fixed_effects``, normalised as fixest does), the cells and levels dropped before the fit,
absorbed covariates, and the degrees of freedom with the effect levels counted.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from functools import cached_property

import numpy as np
import pandas as pd
import xarray as xr

from ..frontend.fixed_effects import FixedEffectsObjective
from .results import GLMResults

__all__ = ["FixedEffectsResults", "EffectArrays"]


class EffectArrays(Mapping):
    """The estimated effects by name (``"exporter^year"``; ``"exporter:year"`` also works)."""

    def __init__(self, arrays: dict[str, xr.DataArray]):
        self._arrays = arrays

    def _key(self, key: str) -> str:
        return key.replace(":", "^") if isinstance(key, str) else key

    def __getitem__(self, key):
        return self._arrays[self._key(key)]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return "EffectArrays(" + ", ".join(f"{k}: {dict(v.sizes)}" for k, v in self._arrays.items()) + ")"


def _warn_unseen(name: str, effect: xr.DataArray, eta: xr.DataArray) -> None:
    """Warn when the new data have levels of ``effect`` the fit did not see (their predictions
    are NaN), naming the effect, how many levels and some of them."""
    new = {d: eta.indexes[d] for d in effect.dims}
    seen = {d: new[d].isin(effect.indexes[d]) for d in effect.dims}
    total = int(np.prod([len(new[d]) for d in effect.dims]))
    n_unseen = total - int(np.prod([int(seen[d].sum()) for d in effect.dims]))
    if not n_unseen:
        return
    shown = "; ".join(
        f"{d}: {', '.join(map(repr, new[d][~seen[d]][:5].tolist()))}{' ...' if (~seen[d]).sum() > 5 else ''}"
        for d in effect.dims
        if (~seen[d]).any()
    )
    warnings.warn(
        f"predict: fixed effect {name!r} has {n_unseen:,} level(s) in the new data that the fit did not "
        f"see ({shown}); the model has no estimate for them, so the predictions at their cells are NaN. "
        "Drop those cells from the new data, or refit with data that include them",
        UserWarning,
        stacklevel=_outside_daskglm(),
    )


def _outside_daskglm() -> int:
    """The ``stacklevel`` of the first caller outside the daskglm package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("daskglm."):
        frame, level = frame.f_back, level + 1
    return level


class FixedEffectsResults(GLMResults):
    """A :class:`~daskglm.api.results.GLMResults` of a model with fixed effects.

    Extra attributes: ``fixed_effects`` (labelled arrays, NaN at levels without a used cell or
    dropped), ``effects`` (names and numbers of levels), ``absorbed`` (covariates dropped as
    absorbed by the effects), ``n_dropped`` / ``levels_dropped`` (cells and levels left out as
    singletons or for perfect prediction), ``inner_iterations`` (conjugate-gradient steps per
    Newton step).
    """

    def __init__(self, *, objective: FixedEffectsObjective, ssc: bool, **kwargs):
        super().__init__(**kwargs)
        self._objective = objective
        self.ssc = ssc
        self.absorbed = list(objective.absorbed)
        names = self.layout.param_names[: self.layout.n_beta]
        keep = [n for n in self._panel.user_order if n not in self.absorbed]
        self._order = [names.index(n) for n in keep]
        self.param_names = keep
        drops = objective.drops
        self.nobs = objective.nobs
        self.sum_weights = float(objective.sum_weights)
        self.n_dropped = int(drops.n_cells_dropped) + int(self._setup.n_dropped)
        self.levels_dropped = dict(drops.n_levels_dropped)
        self.n_levels = dict(zip((e.name for e in objective.effects), drops.levels(), strict=True))
        self.effects = dict(self.n_levels)
        self.k_params = len(keep) + objective.layout.family.n_extra
        k_fe = sum(self.n_levels.values()) - (len(self.n_levels) - 1)
        self.df_model = len(keep)
        self.df_resid = self.sum_weights - len(keep) - k_fe
        self.inner_iterations = list(objective.inner_iterations)
        final = self._final
        if final.get("clusters"):  # the smallest number of clusters among the clusterings, as G
            pairs = zip(final["clusters"], final["signs"], strict=True)
            self.n_clusters = min(n for (_, n), sign in pairs if sign > 0)

    # ------------------------------------------------------------------ estimates
    @cached_property
    def fixed_effects(self) -> EffectArrays:
        """The effects over their dims, normalised as fixest does: every effect but the first
        has its first level with a used cell at 0, the first effect absorbs the constant; NaN
        where a level has no used cell (or was dropped).

        That pins the one constant every pair of effects can trade. Effects that share dims
        (``i^k`` beside ``j^k``: a constant per ``k``) or whose levels fall into disconnected
        groups can trade more, and then the levels themselves are not identified (fixest calls
        such effects irregular): predictions and differences that those shifts cancel are, but
        two solvers may return different level arrays."""
        obj = self._objective
        _, levels = obj.split(self._params_all)
        levels = [np.where(n > 0, a, np.nan) for a, n in zip(levels, obj.drops.n_used, strict=True)]
        for a in levels[1:]:
            valid = np.flatnonzero(np.isfinite(a.ravel()))
            if valid.size:
                c = a.ravel()[valid[0]]
                a -= c
                levels[0] += c
        coords = self._panel.coords
        out = {}
        for e, a in zip(obj.effects, levels, strict=True):
            out[e.name] = xr.DataArray(a, dims=e.dims, coords={d: coords[d] for d in e.dims}, name=e.name)
        return EffectArrays(out)

    @property
    def _k_ic(self) -> int:
        return int(self.k_params + sum(self.n_levels.values()) - (len(self.n_levels) - 1))

    @property
    def _ll_const(self) -> float:
        """Over the cells the effects' drops leave (the setup's counts every observed cell)."""
        return self._final["ll_const"]

    @cached_property
    def llnull(self) -> float:
        """Log-likelihood of the constant-only model on the same cells (those the effects'
        drops leave; same offsets, exposure, weights), as fixest's ``ll_null``. A few passes."""
        st = self._objective.null_fit()
        return float(self._full_ll(st["ll"], st["dev"]))

    # ------------------------------------------------------------------ predictions
    def _predict_grid(self, ds: xr.Dataset | None, which: str) -> xr.DataArray:
        """Lazy predictions over the grid of ``ds`` (the fitted panel when ``None``), the fixed
        effects included: NaN at the cells of levels without an estimate, and of levels the fit
        did not see (a warning names the effect and counts them)."""
        eta = super()._predict_grid(ds, which="linear")
        for name, a in self.fixed_effects.items():
            if ds is not None:
                _warn_unseen(name, a, eta)
            eta = eta + a.reindex({d: eta.indexes[d] for d in a.dims})
        eta = eta.transpose(*self.layout.dims)
        if which == "linear":
            return eta.rename("predicted_linear")
        fam = self.family
        return xr.apply_ufunc(fam.inverse_link, eta, dask="parallelized", output_dtypes=[float]).rename(
            "predicted_mean"
        )

    # ------------------------------------------------------------------ output
    def summary(self) -> str:
        """A readable table of the fit, with the effects, their sizes and the dropped cells."""
        eff = ", ".join(f"{k} ({v})" for k, v in self.n_levels.items())
        lines = self._header("daskglm results (fixed effects)", [f"Fixed effects (levels): {eff}"])
        lines += [
            f"Covariance: {self.cov_type}"
            + (f" by {self.cluster} ({self.n_clusters} clusters)" if self.cov_type == "cluster" else "")
            + (
                " (fixest/pyfixest small-sample corrections)" if self.ssc else " (no small-sample correction)"
            ),
        ]
        if self.n_dropped:
            what = ", ".join(f"{k}: {v}" for k, v in self.levels_dropped.items() if v)
            lines.append(
                f"Dropped cells: {self.n_dropped} (singletons / perfect prediction; "
                f"levels dropped: {what or 0})"
            )
        if self.absorbed:
            lines.append(f"Absorbed by the effects (dropped): {', '.join(self.absorbed)}")
        lines.append("-" * 78)
        if self.cov_type is not None:
            with pd.option_context("display.width", 120, "display.max_rows", 500):
                lines.append(self._table().to_string(float_format=lambda v: f"{v:.6g}"))
        else:
            lines.append(self.params.to_string())
        if self.alpha is not None:
            lines.append("-" * 78)
            se = f" (std err {self.alpha_bse:.6g})" if self.alpha_bse is not None else ""
            lines.append(f"alpha: {self.alpha:.6g}{se}")
        if not self.converged:
            lines.append(f"Warning: not converged: {self.message}")
        lines.append("=" * 78)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<FixedEffectsResults {self.family!r}, {len(self.param_names)} coefficients, "
            f"effects {list(self.n_levels)}, llf={self.llf:.6g}>"
        )
