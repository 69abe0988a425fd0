"""Binomial logit with a number of trials per cell: successes out of trials, on a 2-D panel.

    python examples/binomial_trials.py

clinic x month panel: y patients cured out of `trials` treated; covariates on the clinic, the
month and the cell; the binomial log-likelihood includes log C(trials, y), as R reports it.
"""

import numpy as np
import xarray as xr

import daskglm as dg

rng = np.random.default_rng(0)
clinics, months = 300, 36
ds = xr.Dataset(coords={"clinic": np.arange(clinics), "month": np.arange(months)})
ds["staff_ratio"] = ("clinic", rng.normal(size=clinics))
ds["season"] = (
    ("month", "harmonic"),
    np.column_stack([np.sin(np.arange(months) / 6 * np.pi), np.cos(np.arange(months) / 6 * np.pi)]),
)
ds = ds.assign_coords(harmonic=["sin", "cos"])
ds["new_protocol"] = (("clinic", "month"), (rng.random((clinics, months)) < 0.3).astype(float))
ds["trials"] = (("clinic", "month"), rng.integers(5, 60, size=(clinics, months)).astype(float))
eta = (-0.3 + 0.4 * ds.staff_ratio + 0.2 * ds.season.sel(harmonic="sin") + 0.6 * ds.new_protocol).transpose(
    "clinic", "month"
)
p = 1 / (1 + np.exp(-eta.values))
ds["cured"] = (("clinic", "month"), rng.binomial(ds.trials.values.astype(int), p).astype(float))
ds["cured"] = ds.cured.where(rng.random((clinics, months)) > 0.1)  # 10% of cells unobserved

res = dg.fit(
    ds,
    "cured",
    ["staff_ratio", "season", "new_protocol"],
    dg.Binomial(trials="trials"),
    cov_type="cluster",
    cluster="clinic",
)
print(res.summary())
print("\nestimates as labelled arrays:\n", res.to_xarray())
