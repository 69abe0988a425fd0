"""Out-of-core and strong scaling: a zarr panel larger than the workers' memory, fitted anyway.

    python benchmarks/out_of_core.py [--sizes 250,250,400] [--memory-limit 300MB] [--out FILE]

Writes a float32 3-D Poisson panel (y and 8 full-grid covariates, plus (i,j) and k blocks)
chunk by chunk, then fits it on LocalClusters of real worker processes:

1. one worker whose memory limit is a third (or less) of the full-grid arrays: streamed;
2. two such workers: streamed (strong scaling, 1 vs 2 workers);
3. two workers with room to spare: persisted in worker memory.

For each run: seconds per Newton iteration, passes, whether any worker was restarted (a nanny
restarts a worker killed for memory, under a new address), and the largest |estimate - truth|
in standard errors.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings

import numpy as np
from distributed import Client, LocalCluster

import daskglm as dg
from daskglm.api.simulate import simulate_panel

warnings.simplefilter("ignore")


def fit_on(path: str, x: list[str], n_workers: int, memory_limit: str, truth: dict) -> dict:
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        before = set(client.scheduler_info()["workers"])
        t0 = time.perf_counter()
        res = dg.fit(path, "y", x, "poisson", exposure="exposure", client=client, progress=False)
        seconds = time.perf_counter() - t0
        after = set(client.scheduler_info()["workers"])
    it = res.history["seconds"].diff().dropna()
    z = max(abs(res.params[k] - v) / res.bse[k] for k, v in truth.items())
    return {
        "workers": n_workers,
        "memory_limit": memory_limit,
        "persisted": res.persisted,
        "reason": res.persist_reason,
        "seconds": round(seconds, 1),
        "s_per_iteration": round(float(it.median()), 2),
        "passes": res.passes,
        "converged": res.converged,
        "workers_restarted": len(before - after),
        "max_z_vs_truth": round(float(z), 2),
        "params": res.params.to_dict(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250,250,400")
    ap.add_argument("--memory-limit", default="300MB")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    i, j, k = (int(v) for v in args.sizes.split(","))
    blocks = {"x_ijk": (("i", "j", "k"), 8), "x_ij": (("i", "j"), 2), "x_k": (("k",), 2)}
    with tempfile.TemporaryDirectory(prefix="daskglm-ooc-") as tmp:
        path = f"{tmp}/panel.zarr"
        ds = simulate_panel(
            {"i": i, "j": j, "k": k},
            "poisson",
            blocks=blocks,
            exposure=True,
            dtype=np.float32,
            chunks={"i": 25, "j": 25},
            seed=11,
        )
        t0 = time.perf_counter()
        ds.to_zarr(path, mode="w")
        full = sum(ds[v].nbytes for v in ds.data_vars if ds[v].ndim == 3)
        print(
            f"wrote {i * j * k:.3g} cells, full-grid arrays {full / 1e9:.2f} GB, "
            f"{time.perf_counter() - t0:.0f}s"
        )
        truth = json.loads(ds.attrs["true_params"])
        x = [v for v in ds.data_vars if v.startswith("x_")]
        runs = [
            fit_on(path, x, 1, args.memory_limit, truth),
            fit_on(path, x, 2, args.memory_limit, truth),
            fit_on(path, x, 2, "4GB", truth),
        ]
    p0 = np.array(list(runs[0]["params"].values()))
    for r in runs:
        r["max_rel_diff_vs_first"] = float(
            np.max(np.abs(np.array(list(r.pop("params").values())) - p0) / np.abs(p0))
        )
        print(r, flush=True)
    summary = {"cells": i * j * k, "full_grid_GB": full / 1e9, "runs": runs}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
