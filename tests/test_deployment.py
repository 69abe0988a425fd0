"""The recipes in cluster/: TLS (certificates from openssl), the local start script, the
SLURM/PBS job script rendered by dask-jobqueue, and the Kubernetes manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed.security import Security
from helpers import make_panel
from test_cluster import start_worker, stop

import daskglm as dg

pytestmark = pytest.mark.slow
CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    ds, x = make_panel(2, "poisson", seed=51)
    path = tmp_path_factory.mktemp("dep") / "p.zarr"
    ds.chunk({"i": 6}).to_zarr(path, mode="w")
    return str(path), x, dg.fit(ds, "y", x, "poisson")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(
        ["bash", str(CLUSTER / "tls" / "make-certs.sh"), str(out)], check=True, capture_output=True
    )
    return out


def test_tls_cluster(certs, tmp_path, small_fit):
    path, x, ref = small_fit
    tls = ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / "cert.pem")]
    tls += ["--tls-key", str(certs / "key.pem")]
    sched_file = tmp_path / "s.json"
    sched = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0"]
        + ["--dashboard-address", ":0", "--scheduler-file", str(sched_file), *tls],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://")
        worker = start_worker(address, *tls)
        sec = Security(
            tls_ca_file=str(certs / "ca.pem"),
            tls_client_cert=str(certs / "cert.pem"),
            tls_client_key=str(certs / "key.pem"),
            require_encryption=True,
        )
        res = dg.fit(path, "y", x, "poisson", client=address, security=sec)
        assert address in res.compute_target
        np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
        # a client without the certificates is refused
        with pytest.raises(ConnectionError, match="certificates"):
            dg.fit(path, "y", x, "poisson", client=address)
    finally:
        stop(*([worker] if worker else []), sched)


def test_start_local_script(tmp_path, small_fit):
    path, x, ref = small_fit
    env = {
        **ENV,
        "DASKGLM_CLUSTER_DIR": str(tmp_path),
        "DASKGLM_SCHEDULER_PORT": "0",
        "DASKGLM_DASHBOARD": ":0",
    }
    out = subprocess.run(
        ["bash", str(CLUSTER / "start-local.sh"), "1", "1GB"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    address = out.stdout.strip().splitlines()[-1]
    try:
        assert address.startswith("tcp://")
        from distributed import Client

        with Client(address, set_as_default=False) as c:
            c.wait_for_workers(1, timeout=60)
        res = dg.fit(path, "y", x, "poisson", client=address)
        np.testing.assert_allclose(res.params, ref.params, rtol=1e-10)
    finally:
        subprocess.run(["bash", str(CLUSTER / "stop-local.sh")], env=env, check=True)


@pytest.mark.parametrize("flag, marker", [([], "#SBATCH --cpus-per-task=8"), (["--pbs"], "#PBS -l select=1")])
def test_jobqueue_script_renders(flag, marker):
    pytest.importorskip("dask_jobqueue")
    out = subprocess.run(
        [sys.executable, str(CLUSTER / "slurm" / "launch.py"), "panel.zarr", "--y", "y", "--dry-run", *flag],
        capture_output=True,
        text=True,
        check=True,
        env=ENV,
    )
    assert marker in out.stdout
    assert "distributed.cli.dask_worker" in out.stdout and "--nworkers 2" in out.stdout


def test_kubernetes_manifests_parse():
    cluster = yaml.safe_load((CLUSTER / "kubernetes" / "daskcluster.yaml").read_text())
    assert cluster["kind"] == "DaskCluster" and cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["spec"]["worker"]["replicas"] >= 1
    ports = {p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert 8786 in ports
    values = yaml.safe_load((CLUSTER / "kubernetes" / "values.yaml").read_text())
    assert values["worker"]["replicas"] >= 1
    assert "daskglm" in values["worker"]["env"][0]["value"]
