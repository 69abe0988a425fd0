"""Fits through a real ``dask scheduler`` and ``dask worker`` processes on loopback, by address.

Also: ``persist=`` decisions, dask's ``scheduler-address`` config, and a worker killed with
SIGKILL in the middle of a fit (the fit finishes with the undisturbed estimates).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import psutil
import pytest
from distributed import Client
from helpers import make_panel

import daskglm as dg

pytestmark = pytest.mark.slow


def _dask_cli(*args: str) -> list[str]:
    # the `dask` console script of this environment (scheduler / worker subcommands)
    exe = os.path.join(os.path.dirname(sys.executable), "dask")
    return [exe, *args]


def start_scheduler(tmp_path, *extra: str) -> tuple[subprocess.Popen, str]:
    sched_file = tmp_path / f"scheduler-{time.monotonic_ns()}.json"
    proc = subprocess.Popen(
        _dask_cli(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--scheduler-file",
            str(sched_file),
            *extra,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        if sched_file.exists() and sched_file.stat().st_size > 0:
            try:
                return proc, json.loads(sched_file.read_text())["address"]
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("dask scheduler did not start")


def start_worker(address: str, *extra: str, memory_limit: str = "1GB") -> subprocess.Popen:
    return subprocess.Popen(
        _dask_cli(
            "worker",
            address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            "1",
            "--memory-limit",
            memory_limit,
            "--no-dashboard",
            *extra,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def panel_store(tmp_path_factory):
    ds, x = make_panel(3, "poisson", seed=31, exposure=True)
    path = tmp_path_factory.mktemp("store") / "p.zarr"
    ds.chunk({"i": 4, "j": 3, "k": 4}).to_zarr(path, mode="w")
    ref = dg.fit(ds, "y", x, "poisson", exposure="expo")
    return str(path), x, ref


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two worker processes, started with the `dask` command line."""
    tmp = tmp_path_factory.mktemp("cluster")
    sched, address = start_scheduler(tmp)
    workers = [start_worker(address) for _ in range(2)]
    try:
        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        stop(*workers, sched)


def test_fit_by_address_persists_when_it_fits(cluster, panel_store):
    path, x, ref = panel_store
    res = dg.fit(path, "y", x, "poisson", exposure="expo", client=cluster)
    assert res.persisted, res.persist_reason
    assert cluster in res.compute_target
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-9)


def test_fit_streaming_from_the_store(cluster, panel_store):
    path, x, ref = panel_store
    res = dg.fit(path, "y", x, "poisson", exposure="expo", client=cluster, persist=False)
    assert not res.persisted and "streamed" in res.persist_reason
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)


def test_scheduler_address_from_dask_config(cluster, panel_store):
    path, x, ref = panel_store
    with dask.config.set({"scheduler-address": cluster}):
        res = dg.fit(path, "y", x, "poisson", exposure="expo")
    assert "from dask config" in res.compute_target
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)


def test_client_object_is_used_as_is(cluster, panel_store):
    path, x, ref = panel_store
    with Client(cluster, set_as_default=False) as c:
        res = dg.fit(path, "y", x, "poisson", exposure="expo", client=c)
        assert c.status == "running"  # left open
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)


def test_worker_killed_mid_fit(tmp_path, panel_store):
    """SIGKILL one of two workers (no nanny: it stays dead) after the second iteration."""
    path, x, ref = panel_store
    sched, address = start_scheduler(tmp_path)
    workers = [start_worker(address, "--no-nanny") for _ in range(2)]
    killed = []
    try:
        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
            pids = c.run(os.getpid)

            def kill_one(row):
                if row["iteration"] == 2 and not killed:
                    victim = sorted(pids.values())[0]
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)

            res = dg.fit(path, "y", x, "poisson", exposure="expo", client=c, persist=True, callback=kill_one)
            assert killed and res.persisted
            assert len(c.scheduler_info()["workers"]) == 1
    finally:
        stop(*workers, sched)
    assert res.converged
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-9)


def test_bad_client_argument(panel_store):
    path, x, _ = panel_store
    with pytest.raises(ValueError, match="is not a scheduler address"):
        dg.fit(path, "y", x, "poisson", exposure="expo", client="my-cluster")
    with pytest.raises(TypeError, match="client=42"):
        dg.fit(path, "y", x, "poisson", exposure="expo", client=42)
    with pytest.raises(ValueError, match="persist='sometimes'"):
        dg.fit(path, "y", x, "poisson", exposure="expo", persist="sometimes")


class _TokenStoreHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder, but only to requests that carry the token header; notes who read chunks."""

    token = "s3cret"
    readers: set[int] = set()

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        if self.headers.get("X-Store-Token") != self.token:
            self.send_error(403, "missing X-Store-Token")
            return
        parts = self.path.strip("/").split("/")
        data_var = len(parts) > 2 and (parts[1] in ("y", "expo") or parts[1].startswith("x"))
        if data_var and "c" in parts[2:]:  # a chunk of a data variable (not metadata, not coords)
            port, server_port = self.client_address[1], self.server.server_address[1]
            for conn in psutil.net_connections(kind="tcp"):
                # the reader's end of this connection (one local port may serve several remotes)
                ours = conn.raddr and conn.raddr.port == server_port and conn.laddr.port == port
                if ours and conn.pid:
                    self.readers.add(conn.pid)
        super().do_GET()

    def do_HEAD(self):
        if self.headers.get("X-Store-Token") != self.token:
            self.send_error(403, "missing X-Store-Token")
            return
        super().do_HEAD()


def test_fsspec_url_with_storage_options_is_read_by_the_workers(cluster, panel_store):
    """An http:// store that needs a header (given in storage_options), read by the workers."""
    path, x, ref = panel_store
    root = os.path.dirname(path)
    handler = functools.partial(_TokenStoreHandler, directory=root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{os.path.basename(path)}"
    try:
        with Client(cluster, set_as_default=False) as c:
            worker_pids = set(c.run(os.getpid).values())
            _TokenStoreHandler.readers.clear()
            res = dg.fit(
                url,
                "y",
                x,
                "poisson",
                exposure="expo",
                client=c,
                persist=False,
                storage_options={"headers": {"X-Store-Token": "s3cret"}},
            )
            readers = set(_TokenStoreHandler.readers)
            with pytest.raises(OSError, match=r"could not open the zarr store 'http.*403.*storage_options="):
                dg.fit(url, "y", x, "poisson", exposure="expo", client=c)
    finally:
        server.shutdown()
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
    assert readers, "no chunk of a data variable was requested"
    assert readers <= worker_pids, f"chunks read by {readers - worker_pids}, not only the workers"
    assert os.getpid() not in readers
