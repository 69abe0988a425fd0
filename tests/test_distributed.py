"""The same fit on a real ``distributed`` cluster (worker processes on loopback) and threads."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream
from helpers import make_panel

import daskglm as dg


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


def test_fit_on_distributed_workers_reading_zarr(client, tmp_path):
    ds, x = make_panel(3, "negative_binomial", seed=21, exposure=True, missing=0.1)
    path = tmp_path / "p.zarr"
    ds.chunk({"i": 3, "j": 3, "k": 4}).to_zarr(path, mode="w")
    with get_task_stream(client) as ts:
        res_cluster = dg.fit(
            str(path), "y", x, "negative_binomial", exposure="expo", cov_type="cluster", cluster=("i", "j")
        )
    workers = {t["worker"] for t in ts.data}
    assert len(ts.data) > 0 and workers <= set(client.scheduler_info()["workers"])
    with client.as_current(), __import__("dask").config.set(scheduler="threads"):
        res_threads = dg.fit(
            ds, "y", x, "negative_binomial", exposure="expo", cov_type="cluster", cluster=("i", "j")
        )
    np.testing.assert_allclose(res_cluster.params, res_threads.params, rtol=1e-10)
    np.testing.assert_allclose(res_cluster.bse, res_threads.bse, rtol=1e-9)
    assert res_cluster.llf == pytest.approx(res_threads.llf, rel=1e-12)


def test_fit_of_a_store_the_user_persisted_does_not_reuse_its_keys(client, tmp_path):
    """The user opened the store and persisted it on the cluster, then fits the store's path.

    Before, the fit's ``xr.open_zarr`` produced the same dask keys with another task behind them
    and the scheduler (in this process for a LocalCluster) warned of a "different run_spec"
    (dask issue 9888), which can end in failures or deadlocks.
    """
    import xarray as xr

    from daskglm.api.simulate import simulate_panel

    # covariates off the full grid too: the fit loads those into memory (a graph of its own)
    ds = simulate_panel({"i": 40, "j": 30, "k": 20}, "poisson", seed=1, dtype=np.float32)
    x = ["x_ijk_1", "x_ij_1", "x_k_2"]
    path = tmp_path / "persisted.zarr"
    ds.to_zarr(path, mode="w")
    users = xr.open_zarr(str(path)).persist()  # the same string the fit is given
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    scheduler_log = logging.getLogger("distributed.scheduler")  # does not propagate to the root
    scheduler_log.addHandler(handler)
    try:
        res_path = dg.fit(str(path), "y", x, "poisson")
        res_users = dg.fit(users, "y", x, "poisson")
    finally:
        scheduler_log.removeHandler(handler)
    assert not [m for m in seen if "run_spec" in m], seen[:1]
    np.testing.assert_allclose(res_path.params, res_users.params, rtol=1e-12)
