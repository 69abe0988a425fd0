"""Out-of-core: a zarr panel at least 3x the cluster's total worker memory limit, fitted anyway.

One worker process under a nanny, with a memory limit just above what an idle worker that has
imported daskglm needs (measured here, since it depends on the installed packages), so the
full-grid arrays cannot fit: the fit must stream them from the store pass after pass. The
estimates are checked against the normal equations accumulated independently, slab by slab,
from the expanded design (numpy on the zarr arrays, no daskglm code), and the worker must be
the same process at the end (a nanny restarts a worker killed for memory under a new pid).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

import daskglm as dg
from daskglm.api.simulate import simulate_panel

pytestmark = pytest.mark.slow

# an idle worker that has run a pass: with the compiled engine the kernels' machine code (and
# llvmlite) are loaded on the first pass, about 75 MB more than the imports alone
_IDLE_RSS = (
    "import psutil, daskglm, distributed, xarray, zarr, dask.array, scipy.special, scipy.optimize;"
    "import numpy as np; from daskglm.api.simulate import simulate_panel;"
    "b = {'x_ijk': (('i', 'j', 'k'), 2), 'x_ij': (('i', 'j'), 1), 'x_k': (('k',), 1)};"
    "ds = simulate_panel({'i': 10, 'j': 10, 'k': 10}, 'gaussian', blocks=b, dtype=np.float32);"
    "daskglm.fit(ds, 'y', ['x_ijk_1', 'x_ijk_2', 'x_ij_1', 'x_k_1'], 'gaussian', progress=False);"
    "print(psutil.Process().memory_info().rss)"
)


def idle_worker_bytes() -> int:
    """Resident memory of a fresh Python process that has imported what a worker runs and
    run a small fit (so the compiled kernels are loaded)."""
    out = subprocess.run([sys.executable, "-c", _IDLE_RSS], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def reference_ols(path: str, x_full: list[str], x_ij: str, x_k: str) -> tuple[np.ndarray, np.ndarray]:
    """OLS params and nonrobust SEs from the expanded design, accumulated over slabs of ``i``."""
    ds = xr.open_zarr(path)
    ni, nj, nk = (ds.sizes[d] for d in ("i", "j", "k"))
    p = 2 + len(x_full) + 1
    xtx, xty, yty, n = np.zeros((p, p)), np.zeros(p), 0.0, 0
    xk = ds[x_k].values.astype(np.float64)
    for start in range(0, ni, 10):
        sl = slice(start, start + 10)
        y = ds["y"].isel(i=sl).values.astype(np.float64).reshape(-1)
        rows = y.size
        cols = [np.ones(rows)]
        cols += [ds[v].isel(i=sl).values.astype(np.float64).reshape(-1) for v in x_full]
        ij = ds[x_ij].isel(i=sl).values.astype(np.float64)
        cols.append(np.broadcast_to(ij[:, :, None], (ij.shape[0], nj, nk)).reshape(-1))
        cols.append(np.broadcast_to(xk, (ij.shape[0], nj, nk)).reshape(-1))
        X = np.column_stack(cols)
        xtx += X.T @ X
        xty += X.T @ y
        yty += y @ y
        n += rows
    beta = np.linalg.solve(xtx, xty)
    sigma2 = (yty - beta @ xty) / (n - p)
    return beta, np.sqrt(np.diag(np.linalg.inv(xtx)) * sigma2)


def test_panel_three_times_the_cluster_memory(tmp_path):
    idle = idle_worker_bytes()
    # the worker pauses at 80% of its limit: leave room above the idle process for a few chunks
    limit = int(max(250e6, 1.25 * idle + 100e6))
    nj, nk = 100, 1000
    cells_needed = 3 * limit / (3 * 4)  # y and two full-grid covariates, float32
    ni = int(np.ceil(cells_needed / (nj * nk) / 5) * 5)
    blocks = {"x_ijk": (("i", "j", "k"), 2), "x_ij": (("i", "j"), 1), "x_k": (("k",), 1)}
    ds = simulate_panel(
        {"i": ni, "j": nj, "k": nk},
        "gaussian",
        blocks=blocks,
        dtype=np.float32,
        chunks={"i": 5, "j": 50},
        seed=5,
    )
    path = str(tmp_path / "big.zarr")
    ds.to_zarr(path, mode="w")
    full_bytes = sum(ds[v].nbytes for v in ds.data_vars if ds[v].ndim == 3)
    assert full_bytes >= 3 * limit
    x = ["x_ijk_1", "x_ijk_2", "x_ij_1", "x_k_1"]
    with (
        warnings.catch_warnings(),
        LocalCluster(
            n_workers=1, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        warnings.simplefilter("ignore", UserWarning)  # distributed's "unmanaged memory is high"
        pids = client.run(lambda: __import__("os").getpid())
        res = dg.fit(path, "y", x, "gaussian", client=client, progress=False)
        assert client.run(lambda: __import__("os").getpid()) == pids, "a worker was restarted"
    assert res.converged
    assert res.persisted is False and "streamed" in res.persist_reason
    assert res.nobs == ni * nj * nk
    beta, bse = reference_ols(path, ["x_ijk_1", "x_ijk_2"], "x_ij_1", "x_k_1")
    np.testing.assert_allclose(res.params.to_numpy(), beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.bse.to_numpy(), bse, rtol=1e-6)
    truth = json.loads(ds.attrs["true_params"])
    z = max(abs(res.params[k] - v) / res.bse[k] for k, v in truth.items())
    assert z < 5
