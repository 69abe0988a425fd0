"""A fit never waits forever: the only worker of a real cluster is killed mid-fit.

Real ``dask scheduler`` / ``dask worker`` processes on loopback (started as in
``tests/test_cluster.py``); the worker runs without a nanny, so nothing replaces it. The fit must
raise :class:`daskglm.ClusterLostError` within ``daskglm.no-workers-timeout`` (set to a few
seconds here) plus one polling interval, name the checkpoint to resume from, and a resumed fit on
a new worker must end at the estimates of an uninterrupted fit.
"""

from __future__ import annotations

import os
import signal
import time

import dask
import numpy as np
import pytest
from dask.utils import key_split
from distributed import Client
from helpers import make_panel
from test_cluster import start_scheduler, start_worker, stop

import daskglm as dg
from daskglm.graph import passes as graph
from daskglm.runtime.scheduling import PassWatchdog, compute_target, no_workers_timeout


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    ds, x = make_panel(3, "poisson", seed=47, exposure=True)
    path = tmp_path_factory.mktemp("lost") / "p.zarr"
    ds.chunk({"i": 4, "j": 3, "k": 4}).to_zarr(path, mode="w")
    ref = dg.fit(ds, "y", x, "poisson", exposure="expo")  # uninterrupted, threaded scheduler
    return str(path), x, ref


def test_threaded_passes_run_without_a_watchdog():
    # the threaded path is a plain dask.compute per pass: nothing is installed
    with compute_target(None) as target:
        assert target.client is None
        assert graph.PASS_COMPUTE.get() is None


def test_timeout_config_is_validated():
    assert no_workers_timeout() == 60.0  # the documented default
    with dask.config.set({"daskglm.no-workers-timeout": "2m"}):
        assert no_workers_timeout() == 120.0
    for bad in ("soon", 0, "-5s"):
        with (
            dask.config.set({"daskglm.no-workers-timeout": bad}),
            pytest.raises(ValueError, match="daskglm.no-workers-timeout=.*positive duration"),
        ):
            compute_target(None).__enter__()  # refused as the fit picks its scheduler


@pytest.mark.slow
def test_only_worker_killed_mid_fit_raises_then_resumes(tmp_path, store):
    path, x, ref = store
    ckpt = tmp_path / "state.json"
    bound = 5.0
    sched, address = start_scheduler(tmp_path)
    workers = [start_worker(address, "--no-nanny")]
    killed_at = []
    try:
        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
            (pid,) = c.run(os.getpid).values()

            def kill_the_worker(row):
                if row["iteration"] == 2 and not killed_at:
                    os.kill(pid, signal.SIGKILL)
                    killed_at.append(time.monotonic())

            with (
                dask.config.set({"daskglm.no-workers-timeout": f"{bound}s"}),
                pytest.raises(dg.ClusterLostError) as info,
            ):
                dg.fit(
                    path,
                    "y",
                    x,
                    "poisson",
                    exposure="expo",
                    client=c,
                    checkpoint=ckpt,
                    callback=kill_the_worker,
                    progress=False,
                )
            waited = time.monotonic() - killed_at[0]
            # the pass's futures are cancelled (the persisted inputs are still referenced by
            # the traceback, which is why some futures remain)
            left = {key_split(k) for k in c.futures}
            assert not [n for n in left if n == "finalize" or "daskglm" in n], left
            # a new worker joins; the same call resumes from the checkpoint
            workers.append(start_worker(address, "--no-nanny"))
            c.wait_for_workers(1, timeout=60)
            res = dg.fit(path, "y", x, "poisson", exposure="expo", client=c, checkpoint=ckpt, progress=False)
    finally:
        stop(*workers, sched)
    msg = str(info.value)
    assert "has had no workers" in msg and address in msg
    assert f"checkpoint={str(ckpt)!r}: it resumes from iteration 2" in msg
    assert "dask worker" in msg and "daskglm.no-workers-timeout" in msg
    # waited the grace period, and not much more: one polling interval (1 s) plus the round trips
    # (about 6 s in all on an idle machine; the margin is for a loaded CI runner)
    assert bound <= waited < bound + 10.0, waited
    assert res.resumed_from == 2 and res.converged
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-9)
    assert res.llf == pytest.approx(ref.llf, rel=1e-12)


@pytest.mark.slow
def test_no_workers_from_the_start_suggests_a_checkpoint(tmp_path, store):
    """A cluster with no worker at all: the setup pass gives up after the bound."""
    path, x, _ = store
    sched, address = start_scheduler(tmp_path)
    try:
        t0 = time.monotonic()
        with (
            dask.config.set({"daskglm.no-workers-timeout": "2s"}),
            pytest.raises(dg.ClusterLostError, match="no checkpoint= was given.*checkpoint='state.json'"),
        ):
            dg.fit(path, "y", x, "poisson", exposure="expo", client=address, progress=False)
        waited = time.monotonic() - t0
    finally:
        stop(sched)
    assert 2.0 <= waited < 8.0, waited


@pytest.mark.slow
def test_scheduler_killed_mid_fit(tmp_path, store):
    """The scheduler itself dies: the client's futures are cancelled and the fit says so."""
    path, x, _ = store
    sched, address = start_scheduler(tmp_path)
    workers = [start_worker(address)]
    try:
        with Client(address, set_as_default=False, timeout="5s") as c:
            c.wait_for_workers(1, timeout=60)

            def kill_the_scheduler(row):
                if row["iteration"] == 1 and sched.poll() is None:
                    sched.send_signal(signal.SIGKILL)
                    sched.wait()

            t0 = time.monotonic()
            with pytest.raises(dg.ClusterLostError, match="lost its connection to the scheduler"):
                dg.fit(path, "y", x, "poisson", exposure="expo", client=c, callback=kill_the_scheduler)
            assert time.monotonic() - t0 < 30
    finally:
        stop(*workers, sched)


def test_watchdog_poll_interval():
    assert PassWatchdog(None, 60.0).poll == 1.0
    assert PassWatchdog(None, 2.0).poll == pytest.approx(0.4)


@pytest.mark.slow
def test_all_workers_paused_raises_instead_of_waiting():
    """Workers paused at their memory limit run nothing: once every worker has been paused
    for the bound, the fit stops with an error that says so (helper 6 saw a 1e8-cell fit wait
    forever on a paused worker after its peer was killed)."""
    from distributed import LocalCluster

    ds, x = make_panel(2, "poisson")
    # a pause threshold below any process's memory: the workers are paused from the start
    with (
        dask.config.set({"distributed.worker.memory.pause": 0.01, "distributed.worker.memory.spill": False}),
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit="2GB", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
        dask.config.set({"daskglm.no-workers-timeout": "3s"}),
    ):
        t0 = time.monotonic()
        with pytest.raises(dg.ClusterLostError, match="paused"):
            dg.fit(ds, "y", x, "poisson", client=client, progress=False)
        assert time.monotonic() - t0 < 60


def test_one_worker_paused_the_whole_time_raises():
    """A worker that stays paused (seen: by its own unmanaged memory, on a 1e8-cell fit with
    1 GB workers) runs none of the tasks it holds, while its peer keeps running: the pass
    waited forever. The watchdog stops once the same worker has been paused for the bound.
    (A fake client: a real worker cannot be held paused with tasks on it deterministically.)"""

    class FakeClient:
        status = "running"

        def sync(self, fn, *args, **kwargs):
            time.sleep(0.01)
            return None  # the pass never finishes

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"tcp://a:1": {"status": "running"}, "tcp://b:2": {"status": "paused"}}}

    watchdog = PassWatchdog(FakeClient(), 0.3)
    t0 = time.monotonic()
    with pytest.raises(dg.ClusterLostError, match=r"1 of its 2 workers \(tcp://b:2\) paused"):
        watchdog._wait([])
    assert 0.3 <= time.monotonic() - t0 < 5
