"""A 1e9-cell panel fitted out of core on this machine: two workers, at most 4 GB each.

``python benchmarks/billion.py [--dims i=1000,j=1000,k=1000] [--chunks i=50,j=100] [--store DIR]
[--memory-limit 4GB] [--codec CODEC] [--keep] [--out benchmarks/billion.json]``

1. Writes (once; reused when present) a 3-D float32 Poisson panel with ``daskglm simulate`` (the
   command line, as a user would): ``y``, an ``exposure`` on (i, j), four full-grid covariates and
   smaller blocks on (i, j), (i, k), (j, k), i, j and k (two covariates each): ~20 GB at 1e9 cells.
2. Drops the page cache when it can (root), so the store is read from disk, not from memory.
3. On a ``LocalCluster`` of two one-thread worker processes with ``--memory-limit`` each:
   * **the floor**: one plain ``dask.compute`` of the sum of every full-grid array of the store
     (the same reads, no model), twice with the page cache dropped first (cold: from disk),
     and twice after the fit without dropping it (warm: the OS may hold the store in memory,
     as it does for the fit's later passes when the store fits in the page cache);
   * **the fit**: ``dg.fit(store, "y", x, "poisson", exposure="exposure", client=client)``.
4. Records the whole fit's wall time, the passes and what each kind cost (median seconds per
   pass against the floor), the Newton iterations, the workers' peak memory (sampled) and the
   estimates against the simulation's truth.

Progress goes to stdout; results to ``--out`` (JSON) and a table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gravity_out_of_core import Monitor, _dir_bytes, _peak_rss_gb, _worker_sample  # noqa: E402

BLOCKS = ["x=i,j,k:4", "xij=i,j:2", "xik=i,k:2", "xjk=j,k:2", "xi=i:2", "xj=j:2", "xk=k:2"]


def write_store(path: Path, dims: str, chunks: str, codec: str | None) -> dict:
    """Write the panel with the ``daskglm simulate`` command unless ``path`` already holds it."""
    if path.exists():
        return {"written": False, "seconds": 0.0}
    cmd = ["daskglm", "simulate", str(path), "--dims", dims, "--family", "poisson", "--exposure"]
    cmd += ["--dtype", "float32", "--chunks", chunks, "--seed", "1"]
    for b in BLOCKS:
        cmd += ["--block", b]
    if codec:
        cmd += ["--codec", codec]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return {"written": True, "seconds": round(time.perf_counter() - t0, 1), "command": " ".join(cmd)}


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (needs root); False when not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def floor_seconds(client, path: Path, repeat: int = 2, cold: bool = True) -> list[float]:
    """Seconds of one plain ``dask.compute`` summing every full-grid array of the store; with
    ``cold`` the page cache is dropped before each (the store is read from disk)."""
    import dask
    import xarray as xr

    ds = xr.open_zarr(path)
    full = [ds[v].data for v in ds.data_vars if ds[v].ndim == len(ds.sizes)]
    out = []
    for _ in range(repeat):
        if cold:
            drop_page_cache()
        t0 = time.perf_counter()
        dask.compute(*[a.sum(dtype=np.float64) for a in full])
        out.append(round(time.perf_counter() - t0, 2))
    return out


def fit(path: Path, memory_limit: str) -> dict:
    import xarray as xr
    from distributed import Client, LocalCluster

    import daskglm as dg

    ds = xr.open_zarr(path)
    x = [v for v in ds.data_vars if v.startswith("x")]
    truth = json.loads(ds.attrs.get("true_params", "{}"))
    full_gb = sum(ds[v].nbytes for v in ds.data_vars if ds[v].ndim == len(ds.sizes)) / 1e9
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        floors = floor_seconds(client, path)
        print(f"floor: {floors} s", flush=True)
        drop_page_cache()
        t0 = time.perf_counter()
        mon = Monitor(client, t0, every=5.0)
        mon.start()
        res = dg.fit(str(path), "y", x, "poisson", exposure="exposure", client=client, progress=True)
        seconds = time.perf_counter() - t0
        mon.stop.set()
        mon.join()
        hwm = client.run(lambda dask_worker: _worker_sample(dask_worker)["hwm"])
        # after the fit the store may sit in the OS page cache (15 GB of lz4 on a 24 GB machine):
        # the floor again without dropping it, what the later passes compare with
        warm = floor_seconds(client, path, cold=False)
        print(f"warm floor: {warm} s", flush=True)
    log: dict[str, list[float]] = {}
    for what, secs in res._counter.log:
        log.setdefault(what, []).append(secs)
    floor, warm_floor = min(floors), min(warm)
    z = {k: float((res.params[k] - v) / res.bse[k]) for k, v in truth.items() if k in res.params}
    return {
        "cells": int(np.prod(list(ds.sizes.values()))),
        "sizes": dict(ds.sizes),
        "chunks": {d: int(c[0]) for d, c in ds.chunks.items()},
        "full_grid_gb": round(full_gb, 2),
        "store_gb_on_disk": round(_dir_bytes(path) / 1e9, 2),
        "workers": 2,
        "threads_per_worker": 1,
        "memory_limit_per_worker": memory_limit,
        "floor_seconds_cold": floors,
        "floor_gb_per_s_cold": round(full_gb / floor, 2),
        "floor_seconds_warm": warm,
        "floor_gb_per_s_warm": round(full_gb / warm_floor, 2),
        "fit_seconds": round(seconds, 1),
        "converged": bool(res.converged),
        "newton_iterations": int(res.n_iter),
        "passes": int(res.passes),
        "persisted": getattr(res, "persisted", None),
        "pass_seconds": {
            k: {
                "count": len(v),
                "median": round(float(np.median(v)), 2),
                "total": round(sum(v), 1),
                "median_over_cold_floor": round(float(np.median(v)) / floor, 2),
                "median_over_warm_floor": round(float(np.median(v)) / warm_floor, 2),
            }
            for k, v in log.items()
        },
        "worker_peak_rss_gb_sampled": {w: round(v / 1e9, 2) for w, v in mon.peak_rss.items()},
        "worker_vmhwm_gb": {w: round(v / 1e9, 2) for w, v in hwm.items()},
        "client_peak_rss_gb": round(_peak_rss_gb(), 2),
        "max_abs_z_vs_truth": round(max(abs(v) for v in z.values()), 2) if z else None,
        "params": {k: float(v) for k, v in res.params.items()},
    }


def main() -> None:
    warnings.simplefilter("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="i=1000,j=1000,k=1000")
    ap.add_argument("--chunks", default="i=50,j=100", help="chunk lengths for daskglm simulate")
    ap.add_argument("--store", default="/tmp/daskglm-billion/panel.zarr")
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--codec", default=None, help="passed to daskglm simulate --codec (default: its own)")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--out", default=str(HERE / "billion.json"))
    args = ap.parse_args()
    path = Path(args.store)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = write_store(path, args.dims, args.chunks, args.codec)
    print(f"store: {written}", flush=True)
    out = {"write": written, "page_cache_dropped": drop_page_cache(), **fit(path, args.memory_limit)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "params"}, indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(path)


if __name__ == "__main__":
    main()
