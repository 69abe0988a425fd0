"""A 3-D Poisson panel with exposure, stored as zarr and fitted without expanding the design.

    python examples/poisson_3d_exposure.py

exporter x importer x year counts; covariates on the full grid, on the pair, on each side and
on the year; exposure over (exporter, importer). Standard errors clustered by pair.
"""

import json
import tempfile

import numpy as np

import daskglm as dg
from daskglm.api.simulate import simulate_panel

sizes = {"exporter": 80, "importer": 80, "year": 25}
blocks = {
    "tariff": (("exporter", "importer", "year"), 2),
    "log_dist": (("exporter", "importer"), 1),
    "gdp_o": (("exporter", "year"), 1),
    "gdp_d": (("importer", "year"), 1),
    "landlocked": (("exporter",), 1),
    "trend": (("year",), 1),
}
ds = simulate_panel(
    sizes,
    "poisson",
    blocks=blocks,
    exposure=True,
    missing_fraction=0.05,
    seed=42,
    chunks={"exporter": 40, "importer": 40},
)
with tempfile.TemporaryDirectory() as tmp:
    path = f"{tmp}/trade.zarr"
    ds.to_zarr(path, mode="w")
    x = [v for v in ds.data_vars if v not in ("y", "exposure")]
    res = dg.fit(
        path, "y", x, "poisson", exposure="exposure", cov_type="cluster", cluster=("exporter", "importer")
    )
    print(res.summary())
    truth = json.loads(ds.attrs["true_params"])
    print("\ntrue vs estimated:")
    for name, value in truth.items():
        print(f"  {name:14s} {value: .4f}  {res.params[name]: .4f}  (se {res.bse[name]:.4f})")
    print("\nper-iteration history:\n", res.history[["ll", "step", "grad_norm", "passes", "seconds"]])
    pred = res.predict()  # lazy, over (exporter, importer, year)
    print("\npredicted mean, first exporter/importer:", np.round(pred[0, 0, :5].values, 3))
