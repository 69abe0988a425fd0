"""Gravity PPML at 1e8 cells, streamed from zarr by two workers whose memory is smaller than the data.

``python benchmarks/gravity_out_of_core.py [--grid 1000x100] [--chunk 100] [--memory-limit 0.7GB]
[--persist auto|false] [--bytes] [--scheduler client|process] [--store DIR]
[--out benchmarks/gravity_out_of_core.json]``

1. Writes (once; reused when present) a float32 zarr store of an ``exporter x importer x year``
   panel (``NxT``: N countries, T years) with a Poisson ``y`` drawn from exporter-year,
   importer-year and pair effects (each N(0, 0.5^2)) plus three full-grid covariates ``x1..x3``
   (N(0, 1), coefficients 0.2, -0.1, 0.05), chunked ``chunk x chunk x T``. The store is written
   chunk by chunk with dask (dask's random generators, one seed per chunk for ``y``), never the
   whole array in memory.
2. Fits it with ``dg.fit(store, "y", ["x1", "x2", "x3"], "poisson", fe=[("i","t"), ("j","t"),
   ("i","j")], cov_type="nonrobust", client=client)`` on a ``LocalCluster`` of two one-thread
   workers with ``--memory-limit`` each (their total below the data's size).
3. Records the fit's wall time, passes, Newton and inner iterations, seconds per pass kind, the
   workers' peak memory (sampled every 2 s by ``client.run``, and each worker process's
   ``VmHWM``), whether anything spilled to disk, the client's peak memory, the estimates against
   the truth, and what pyfixest would need for the same long table (its measured peak at 1e7
   cells in ``benchmarks/gravity.json``, scaled linearly in the cells: an estimate, not a run).
   The client's RSS is also sampled (psutil, every 0.5 s) during the fit: its peak above the
   RSS before the fit. ``--persist false`` streams the data from the store on every pass even
   when it would fit in the workers' memory.
4. ``--bytes``: per fixed-effects pass kind, the bytes the client sends to the cluster (the
   pickled graphs of the passes of :mod:`daskglm.graph.effects`: the level arrays embedded in
   them) and receives (the arrays of the results), by wrapping that module's ``run`` and
   ``dask.persist`` (the pickling costs time of its own, recorded as ``accounting_seconds``).
5. The workers' own memory: each worker's RSS, ``VmHWM`` and which heavy modules it has loaded,
   idle before the fit and after it, and every sample's RSS over time (``worker_rss_series``).
   ``--scheduler process`` runs the scheduler (and the workers) in processes of their own
   (distributed's ``SubprocessCluster``) instead of ``LocalCluster``, whose scheduler runs in
   this process: the client's RSS is then the client's alone, and the scheduler's is recorded
   beside it.

Progress goes to stdout (one line per sample); the results to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FE = [("i", "t"), ("j", "t"), ("i", "j")]
X = ["x1", "x2", "x3"]
TRUTH = {"x1": 0.2, "x2": -0.1, "x3": 0.05}
#: pyfixest's measured peak RSS at 1e7 cells (benchmarks/GRAVITY.md), used when gravity.json lacks it
PYFIXEST_1E7_GB = 6.67


def write_store(path: Path, n: int, t: int, chunk: int, seed: int = 0) -> dict:
    """Write the panel to ``path`` chunk by chunk (dask, threaded scheduler); reuse it if present."""
    import dask
    import dask.array as da
    import xarray as xr

    if (path / "zarr.json").exists() or (path / ".zmetadata").exists():
        ds = xr.open_zarr(path)
        return {"written": False, "seconds": 0.0, **json.loads(ds.attrs["gravity_out_of_core"])}
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    fe_it = rng.normal(scale=0.5, size=(n, 1, t))  # exporter-year
    fe_jt = rng.normal(scale=0.5, size=(1, n, t))  # importer-year
    fe_ij = rng.normal(scale=0.5, size=(n, n, 1))  # pair
    shape, chunks = (n, n, t), (chunk, chunk, t)
    rs = da.random.RandomState(seed + 1)
    xs = [rs.standard_normal(shape, chunks=chunks).astype(np.float32) for _ in X]
    eta = sum(TRUTH[k] * x.astype(np.float64) for k, x in zip(X, xs, strict=True))
    eta = (
        eta
        + da.from_array(fe_it, chunks=(chunk, 1, t))
        + da.from_array(fe_jt, chunks=(1, chunk, t))
        + da.from_array(fe_ij, chunks=(chunk, chunk, 1))
    )

    def draw(e, block_id=None):
        return np.random.default_rng([seed, 7, *block_id]).poisson(np.exp(e)).astype(np.float32)

    y = da.map_blocks(draw, eta, dtype=np.float32)
    meta = {"grid": f"{n} x {n} x {t}", "cells": n * n * t, "chunks": list(chunks), "seed": seed}
    dims = ("i", "j", "t")
    ds = xr.Dataset(
        {"y": (dims, y), **{k: (dims, x) for k, x in zip(X, xs, strict=True)}},
        coords={d: np.arange(s) for d, s in zip(dims, shape, strict=True)},
        attrs={"gravity_out_of_core": json.dumps(meta)},
    )
    with dask.config.set(scheduler="threads"):
        ds.to_zarr(path, mode="w")
    return {"written": True, "seconds": time.perf_counter() - t0, **meta}


#: modules whose presence in a worker process is recorded (what a worker loads for a pass)
HEAVY_MODULES = (
    "xarray", "pandas", "pyarrow", "zarr", "numba", "scipy.stats", "scipy.optimize", "formulaic",
    "daskglm.api.fitting", "daskglm.frontend.panel", "daskglm.kernels.chunk_numba",
    "daskglm.kernels.effects_numba",
)  # fmt: skip


def _process_memory(dask_worker=None, dask_scheduler=None) -> dict:
    """This process's RSS and ``VmHWM`` (bytes) and which :data:`HEAVY_MODULES` it has loaded."""
    with open("/proc/self/status") as f:
        status = {
            ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in f if ln.startswith(("VmRSS", "VmHWM"))
        }
    return {
        "rss": status.get("VmRSS", 0),
        "hwm": status.get("VmHWM", 0),
        "modules": [m for m in HEAVY_MODULES if m in sys.modules],
    }


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _worker_sample(dask_worker) -> dict:
    import psutil

    data = dask_worker.data
    spilled = getattr(data, "spilled_total", None)
    slow = getattr(data, "slow", None)
    with open("/proc/self/status") as f:
        hwm = next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:")), 0)
    return {
        "rss": psutil.Process().memory_info().rss,
        "hwm": hwm,
        "keys_in_memory": len(getattr(data, "fast", data)),
        "keys_on_disk": len(slow) if slow is not None else 0,
        "disk_bytes": int(spilled.disk) if spilled is not None else 0,
        "status": str(dask_worker.status),
    }


class ClientRSS(threading.Thread):
    """Sample this process's RSS every ``every`` seconds (psutil); the peak above the start."""

    def __init__(self, every: float = 0.5):
        import psutil

        super().__init__(daemon=True)
        self.proc, self.every = psutil.Process(), every
        self.start_rss = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.peak = max(self.peak, self.proc.memory_info().rss)


def _array_bytes(obj) -> int:
    """Bytes of the numpy arrays in a (nested) result."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_array_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_array_bytes(v) for v in obj)
    return 0


class PassBytes:
    """Bytes sent (pickled graphs) and received (result arrays) by the fixed-effects passes."""

    def __init__(self):
        self.sent: dict[str, list[int]] = {}
        self.received: dict[str, list[int]] = {}
        self.seconds = 0.0
        self._pending = 0

    def _graph_bytes(self, collections) -> int:
        import cloudpickle

        t0 = time.perf_counter()
        dsk: dict = {}
        for c in collections:
            dsk.update(dict(c.__dask_graph__()))
        n = len(cloudpickle.dumps(dsk, protocol=5))
        self.seconds += time.perf_counter() - t0
        return n

    def install(self):
        import dask

        from daskglm.graph import effects

        real_run, real_persist = effects.run, dask.persist

        def persist(*args, **kw):
            if sys._getframe(1).f_globals.get("__name__") == effects.__name__:  # W and pieces held
                self._pending += self._graph_bytes(args)
            return real_persist(*args, **kw)

        def run(counter, what, *graphs, **kw):
            sent = self._graph_bytes(graphs)
            out = real_run(counter, what, *graphs, **kw)
            # a persisted evaluation's graph was sent just before (its W and pieces held)
            self.sent.setdefault(what, []).append(sent + self._pending)
            self._pending = 0
            self.received.setdefault(what, []).append(_array_bytes(out))
            return out

        effects.run = run
        effects.dask.persist = persist

    def summary(self) -> dict:
        med = {k: int(np.median(v)) for k, v in self.sent.items()}
        return {
            "sent_bytes_median": med,
            "received_bytes_median": {k: int(np.median(v)) for k, v in self.received.items()},
            "sent_bytes_total": {k: int(sum(v)) for k, v in self.sent.items()},
            "received_bytes_total": {k: int(sum(v)) for k, v in self.received.items()},
            "sent_bytes_max": {k: int(max(v)) for k, v in self.sent.items()},
            "received_bytes_max": {k: int(max(v)) for k, v in self.received.items()},
            "passes_counted": {k: len(v) for k, v in self.sent.items()},
            "accounting_seconds": round(self.seconds, 1),
        }


class Monitor(threading.Thread):
    """Sample the workers every ``every`` seconds: RSS, keys and bytes spilled to disk."""

    def __init__(self, client, t0: float, every: float = 2.0):
        super().__init__(daemon=True)
        self.client, self.t0, self.every = client, t0, every
        self.stop = threading.Event()
        self.peak_rss: dict[str, int] = {}
        self.peak_disk: dict[str, int] = {}
        self.peak_keys_on_disk: dict[str, int] = {}
        self.paused = False
        #: (seconds, {worker: (rss bytes, status)}) per sample
        self.series: list = []

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                s = self.client.run(_worker_sample)
            except Exception as e:  # noqa: BLE001 - a sample lost is not fatal
                print(f"[{time.perf_counter() - self.t0:7.1f}s] sample failed: {e!r}", flush=True)
                continue
            for w, v in s.items():
                self.peak_rss[w] = max(self.peak_rss.get(w, 0), v["rss"])
                self.peak_disk[w] = max(self.peak_disk.get(w, 0), v["disk_bytes"])
                self.peak_keys_on_disk[w] = max(self.peak_keys_on_disk.get(w, 0), v["keys_on_disk"])
                self.paused |= "paused" in v["status"]
            self.series.append(
                (round(time.perf_counter() - self.t0, 1), {w: (v["rss"], v["status"]) for w, v in s.items()})
            )
            line = "  ".join(
                f"rss {v['rss'] / 1e9:.2f} GB mem {v['keys_in_memory']} disk {v['keys_on_disk']} "
                f"({v['disk_bytes'] / 1e9:.2f} GB) {v['status'].split('.')[-1]}"
                for v in s.values()
            )
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {line}", flush=True)


def _peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    return float("nan")


def pyfixest_estimate(cells: int) -> dict:
    """pyfixest's peak at 1e7 cells (gravity.json if it has it, else GRAVITY.md's figure), scaled."""
    peak, source = PYFIXEST_1E7_GB, "benchmarks/GRAVITY.md (1e7 cells)"
    try:
        for row in json.loads((HERE / "gravity.json").read_text()):
            pf = row.get("pyfixest", {})
            if row.get("cells") == 10_000_000 and "peak_rss_gb" in pf:
                peak, source = pf["peak_rss_gb"], "benchmarks/gravity.json (1e7 cells)"
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return {
        "measured_peak_gb_at_1e7": peak,
        "source": source,
        "estimated_peak_gb": round(peak * cells / 1e7, 1),
        "method": "linear in the cells (the long table and pyfixest's per-row arrays); not run",
    }


def _cluster(memory_limit: str, scheduler: str):
    """Two one-thread workers with ``memory_limit`` each; the scheduler in this process
    (``LocalCluster``) or in one of its own (``SubprocessCluster``)."""
    if scheduler == "process":
        from distributed.deploy.subprocess import SubprocessCluster

        return SubprocessCluster(
            n_workers=2,
            threads_per_worker=1,
            dashboard_address=None,
            worker_kwargs={"memory_limit": memory_limit},
        )
    from distributed import LocalCluster

    return LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=memory_limit, dashboard_address=":0")


def _memory_gb(sample: dict) -> dict:
    return {
        "rss_gb": round(sample["rss"] / 1e9, 3),
        "hwm_gb": round(sample["hwm"] / 1e9, 3),
        "modules": sample["modules"],
    }


def fit(
    path: Path, memory_limit: str, persist="auto", count_bytes: bool = False, scheduler: str = "client"
) -> dict:
    from distributed import Client

    import daskglm as dg

    with _cluster(memory_limit, scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        before = set(client.scheduler_info()["workers"])
        idle = {w: _memory_gb(v) for w, v in client.run(_process_memory).items()}
        client_idle = _memory_gb(_process_memory())
        print(f"idle workers {idle}", flush=True)
        accounting = PassBytes() if count_bytes else None
        if accounting is not None:
            accounting.install()
        t0 = time.perf_counter()
        mon = Monitor(client, t0)
        mon.start()
        rss = ClientRSS()
        rss.start()
        error = None
        try:
            res = dg.fit(
                str(path),
                "y",
                X,
                "poisson",
                fe=FE,
                cov_type="nonrobust",
                client=client,
                progress=True,
                persist=persist,
            )
        except Exception as e:  # noqa: BLE001 - recorded in the JSON
            res, error = None, f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        mon.stop.set()
        mon.join()
        rss.stop.set()
        rss.join()
        hwm = client.run(lambda dask_worker: _worker_sample(dask_worker)["hwm"])
        after_fit = {w: _memory_gb(v) for w, v in client.run(_process_memory).items()}
        sched = _memory_gb(client.run_on_scheduler(_process_memory)) if scheduler == "process" else None
        after = set(client.scheduler_info()["workers"])
    out = {
        "workers": 2,
        "threads_per_worker": 1,
        "memory_limit_per_worker": memory_limit,
        "scheduler": "own process (SubprocessCluster)"
        if scheduler == "process"
        else "in the client process (LocalCluster)",
        "code_commit": _code_commit(),
        "worker_idle_before_fit": idle,
        "worker_after_fit": after_fit,
        "client_idle_before_fit": client_idle,
        "scheduler_process_memory": sched,
        "worker_rss_series": [
            [t, {w: [round(r / 1e9, 3), st.split(".")[-1]] for w, (r, st) in v.items()}]
            for t, v in mon.series
        ],
        "fit_seconds": round(seconds, 1),
        "workers_restarted": len(before - after),
        "worker_peak_rss_gb_sampled": {w: round(v / 1e9, 3) for w, v in mon.peak_rss.items()},
        "worker_vmhwm_gb": {w: round(v / 1e9, 3) for w, v in hwm.items()},
        "spilled_to_disk_peak_gb": {w: round(v / 1e9, 3) for w, v in mon.peak_disk.items()},
        "spilled_keys_peak": mon.peak_keys_on_disk,
        "spilled": any(v > 0 for v in mon.peak_keys_on_disk.values()),
        "worker_paused_seen": mon.paused,
        "client_peak_rss_gb": round(_peak_rss_gb(), 3),
        "client_rss_before_fit_gb": round(rss.start_rss / 1e9, 3),
        "client_peak_rss_during_fit_gb_sampled": round(rss.peak / 1e9, 3),
        "persist_option": persist,
    }
    if accounting is not None:
        out["fe_pass_bytes"] = accounting.summary()
    if error is not None:
        out["error"] = error
        return out
    log: dict[str, list[float]] = {}
    for what, secs in res._counter.log:
        log.setdefault(what, []).append(secs)
    out.update(
        {
            "converged": bool(res.converged),
            "persisted": getattr(res, "persisted", None),
            "persist_reason": getattr(res, "persist_reason", None),
            "nobs": int(res.nobs),
            "passes": int(res.passes),
            "newton_iterations": int(res.n_iter),
            "inner_iterations": [int(v) for v in res.inner_iterations],
            "pass_seconds": {
                k: {
                    "count": len(v),
                    "total": round(sum(v), 1),
                    "median": round(float(np.median(v)), 2),
                    "max": round(max(v), 2),
                }
                for k, v in log.items()
            },
            "params": {k: float(res.params[k]) for k in X},
            "bse": {k: float(res.bse[k]) for k in X},
            "truth": TRUTH,
            "z_vs_truth": {k: round(float((res.params[k] - v) / res.bse[k]), 2) for k, v in TRUTH.items()},
        }
    )
    return out


def _code_commit() -> str | None:
    """The git commit of the daskglm that is imported (``+dirty`` with uncommitted changes), or
    ``$DASKGLM_CODE_COMMIT`` (a snapshot of a commit outside the repository, on ``PYTHONPATH``)."""
    import os
    import subprocess

    import daskglm

    if os.environ.get("DASKGLM_CODE_COMMIT"):
        return f"{os.environ['DASKGLM_CODE_COMMIT']} (snapshot at {Path(daskglm.__file__).parent})"

    root = Path(daskglm.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "daskglm"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="1000x100", help="NxT: N countries, T years (N*N*T cells)")
    ap.add_argument("--chunk", type=int, default=100, help="chunk length along exporter and importer")
    ap.add_argument("--memory-limit", default="0.7GB", help="per worker (two workers)")
    ap.add_argument("--persist", default="auto", choices=["auto", "false"], help="dg.fit's persist=")
    ap.add_argument("--bytes", action="store_true", help="count the bytes of the fixed-effects passes")
    ap.add_argument(
        "--scheduler",
        default="client",
        choices=["client", "process"],
        help="where the scheduler runs: in this process (LocalCluster) or its own (SubprocessCluster)",
    )
    ap.add_argument("--store", default=None, help="zarr store (default /work/tmp/gravity_NxT.zarr)")
    ap.add_argument("--out", default=str(HERE / "gravity_out_of_core.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    n, t = map(int, args.grid.split("x"))
    store = Path(args.store or f"/work/tmp/gravity_{n}x{t}.zarr")
    store.parent.mkdir(parents=True, exist_ok=True)
    print(f"store {store}", flush=True)
    meta = write_store(store, n, t, args.chunk)
    cells = n * n * t
    meta.update(
        {
            "store_bytes_on_disk": _dir_bytes(store),
            "data_bytes_float32": 4 * 4 * cells,
            "W_bytes_float64": 8 * cells,
            "levels": 2 * n * t + n * n,
        }
    )
    print(json.dumps(meta), flush=True)
    result = {
        "data": meta,
        "daskglm": fit(
            store,
            args.memory_limit,
            "auto" if args.persist == "auto" else False,
            count_bytes=args.bytes,
            scheduler=args.scheduler,
        ),
        "pyfixest": pyfixest_estimate(cells),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
