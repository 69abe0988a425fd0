"""A fit streamed from a zarr store holds the inputs off the full grid in memory.

Without it every pass re-read the small covariates (on ``(i, j)``, ``k``...) from the store
once per chunk. The estimates must not change: checked against statsmodels on the expanded
design, with the store chunked so that every small array spans several chunks.
"""

from __future__ import annotations

import numpy as np
from helpers import expand, statsmodels_fit

import daskglm as dg
from daskglm.api.simulate import simulate_panel
from daskglm.graph import passes as graph

BLOCKS = {"x": (("i", "j", "k"), 2), "xij": (("i", "j"), 2), "xk": (("k",), 1), "xjk": (("j", "k"), 1)}


def _store(tmp_path):
    ds = simulate_panel(
        {"i": 24, "j": 20, "k": 12}, "poisson", blocks=BLOCKS, chunks={"i": 8, "j": 10, "k": 6}
    )
    path = tmp_path / "panel.zarr"
    ds.to_zarr(path)
    ds = ds.load()
    return ds, str(path), [v for v in ds.data_vars if v.startswith("x")]


def test_store_fit_holds_small_inputs_and_matches_statsmodels(tmp_path):
    ds, path, x = _store(tmp_path)
    res = dg.fit(path, "y", x, "poisson")
    assert "held in memory" in res.persist_reason
    df = expand(ds, x)
    ref = statsmodels_fit("poisson", df, x)
    np.testing.assert_allclose(res.params[ref.params.index], ref.params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.bse[ref.params.index], ref.bse, rtol=1e-6)


def test_small_inputs_not_held_when_they_are_large_beside_the_full_grid(tmp_path, monkeypatch):
    ds, path, x = _store(tmp_path)
    monkeypatch.setattr(graph, "SMALL_ARRAYS_SHARE", 1e-6)
    res = dg.fit(path, "y", x, "poisson")
    assert "held in memory" not in res.persist_reason
    ref = dg.fit(ds, "y", x, "poisson")
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-10)
