"""The same fit on a real ``distributed`` cluster (worker processes on loopback) and threads."""

from __future__ import annotations

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
