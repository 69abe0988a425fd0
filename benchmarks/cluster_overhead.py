"""Where a fit on a LocalCluster spends its time, beside the same fit on dask's threads.

    python benchmarks/cluster_overhead.py [--sizes 200,200,50] [--chunks peers|demo|I,J,K]
        [--repeat 3] [--workers 2] [--label NAME] [--out FILE.json]

The panel: 3-D Poisson, 28 coefficients in 7 dim-blocks (``daskglm.api.simulate.simulate_panel``,
as ``peers.py`` and ``engine_vs_floor.py``), 2e6 cells by default, stored chunked as
``simulate_panel`` chunks by default (``--chunks peers``) or as ``daskglm demo`` does
(``--chunks demo``: 50 x 50 x k). Settings, each fitted ``--repeat`` times after a warm-up fit
(the best whole fit is kept; per-pass figures are medians over its passes):

* ``threads``: ``dg.fit`` on dask's threaded scheduler, the panel persisted in this process;
* ``threads_zarr``: threads, streamed from the zarr store on every pass;
* ``cluster``: ``dg.fit(..., client=client)`` on a LocalCluster of ``--workers`` worker
  processes x 1 thread, the panel persisted in the workers' memory before the fit;
* ``cluster_tasks``: ``cluster`` with ``daskglm.direct-passes`` off (every pass as tasks through
  the scheduler; skipped with ``--no-tasks``);
* ``cluster_zarr``: the same cluster given the store's path (``persist="auto"`` reads it into
  the workers inside the fit).

For every setting: whole-fit seconds (setup passes, iterations and the final pass), passes,
seconds per pass by kind (setup, eval, final), per Newton iteration (median time between
iterations), tasks per pass, and the ratio to threads. On the cluster the scheduler's task
stream splits each pass into the time before the first task starts (graph building,
submission, scheduling), the workers' compute (per worker), transfers, and the time after the
last task until the client has the result; a client-side profile names the costliest calls.
The workers' and the scheduler's own statistical profiles (``client.profile``) over the best
cluster fit give the functions where their samples fall.

The record goes to ``cluster_overhead.json`` under ``--label`` (other labels are kept), so a
before/after pair is two runs with two labels. Run under the bench lock:
``flock /tmp/notes/bench.lock python benchmarks/cluster_overhead.py --label after``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from dask.callbacks import Callback

import daskglm as dg
from daskglm.api.simulate import simulate_panel
from daskglm.graph import passes as graph

warnings.simplefilter("ignore")


class PassClock:
    """Wall-clock window of every pass (wraps :meth:`daskglm.graph.passes.PassCounter.record`)."""

    def __init__(self):
        self.windows: list[tuple[str, float, float]] = []
        self._orig = graph.PassCounter.record

    def __enter__(self):
        windows, orig = self.windows, self._orig

        def record(counter, what, seconds):
            now = time.time()
            windows.append((what, now - seconds, now))
            return orig(counter, what, seconds)

        graph.PassCounter.record = record
        return self

    def __exit__(self, *exc):
        graph.PassCounter.record = self._orig


class TaskCount(Callback):
    """Tasks run by dask's local schedulers (the threaded setting)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def _posttask(self, key, result, dsk, state, id):
        self.times.append(time.time())


def _fit(data, x, **kw):
    t0 = time.perf_counter()
    res = dg.fit(data, "y", x, "poisson", progress=False, **kw)
    return res, time.perf_counter() - t0


def _summary(res, seconds: float, windows, tasks_per_pass: list[int]) -> dict:
    log = res._counter.log
    by_kind = defaultdict(list)
    for what, s in log:
        by_kind[what].append(s)
    iters = np.diff(res.history["seconds"].to_numpy())
    return {
        "fit_s": seconds,
        "passes": int(res.passes),
        "iterations": int(res.n_iter),
        "iteration_s": float(np.median(iters)) if iters.size else None,
        "pass_s": {k: float(statistics.median(v)) for k, v in by_kind.items()},
        "passes_by_kind": {k: len(v) for k, v in by_kind.items()},
        "setup_s": float(sum(by_kind.get("setup", [])) + sum(by_kind.get("setup-qr", []))),
        "outside_passes_s": seconds - sum(s for _, s in log),
        "tasks_per_pass": tasks_per_pass,
        "persisted": bool(getattr(res, "persisted", False)),
        "persist_reason": getattr(res, "persist_reason", ""),
        "compute_target": getattr(res, "compute_target", ""),
        "params": res.params.to_numpy().tolist(),
    }


def run_threads(data, x, repeat: int) -> dict:
    best = None
    for r in range(repeat + 1):  # the first fit warms up (imports, compilation)
        with PassClock() as clock, TaskCount() as tc:
            res, secs = _fit(data, x)
        tasks = [sum(a <= t <= b + 1e-3 for t in tc.times) for _, a, b in clock.windows]
        if r and (best is None or secs < best["fit_s"]):
            best = _summary(res, secs, clock.windows, tasks)
    return best


def _stream_breakdown(windows, stream: list[dict]) -> list[dict]:
    """Per pass: tasks, seconds before the first task starts, per-worker compute, transfers,
    and seconds after the last task ends."""
    out = []
    for what, a, b in windows:
        tasks = [d for d in stream if a <= min(s["start"] for s in d["startstops"]) <= b]
        if not tasks:
            out.append({"what": what, "wall_s": b - a, "tasks": 0})
            continue
        starts = [s["start"] for d in tasks for s in d["startstops"]]
        stops = [s["stop"] for d in tasks for s in d["startstops"]]
        busy = defaultdict(float)
        action = defaultdict(float)
        for d in tasks:
            for s in d["startstops"]:
                action[s["action"]] += s["stop"] - s["start"]
                if s["action"] == "compute":
                    busy[d["worker"]] += s["stop"] - s["start"]
        out.append(
            {
                "what": what,
                "wall_s": b - a,
                "tasks": len(tasks),
                "before_first_task_s": min(starts) - a,
                "after_last_task_s": b - max(stops),
                "compute_per_worker_s": sorted(busy.values(), reverse=True),
                "seconds_by_action": dict(action),
            }
        )
    return out


def _median_breakdown(rows: list[dict]) -> dict:
    evals = [r for r in rows if r["what"] == "eval" and r["tasks"]]
    if not evals:
        return {}
    med = statistics.median
    return {
        "eval_tasks": med(r["tasks"] for r in evals),
        "eval_wall_s": med(r["wall_s"] for r in evals),
        "eval_before_first_task_s": med(r["before_first_task_s"] for r in evals),
        "eval_after_last_task_s": med(r["after_last_task_s"] for r in evals),
        "eval_busiest_worker_compute_s": med(r["compute_per_worker_s"][0] for r in evals),
        "eval_total_compute_s": med(sum(r["compute_per_worker_s"]) for r in evals),
        "eval_transfer_s": med(r["seconds_by_action"].get("transfer", 0.0) for r in evals),
    }


def _client_profile(func, top: int = 12) -> list[str]:
    prof = cProfile.Profile()
    prof.enable()
    func()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln.strip() for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("ncalls")), 0)
    return lines[start : start + top + 1]


def _profile_top(tree: dict, top: int = 10) -> list[tuple[str, float]]:
    """Shares of a dask statistical profile's samples by function (own time, leaves)."""
    own: dict[str, int] = defaultdict(int)

    def walk(node):
        children = node.get("children", {}).values()
        inner = sum(c["count"] for c in children)
        if node["count"] > inner:
            own[node.get("description", {}).get("name", "?") + " " + node.get("identifier", "")[-60:]] += (
                node["count"] - inner
            )
        for c in children:
            walk(c)

    walk(tree)
    total = max(tree.get("count", 0), 1)
    return [(k, round(v / total, 3)) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]]


class DirectCount:
    """Passes run directly on the workers (``DirectPasses.run`` returned a vector) and passes
    that fell back to tasks, when the code has direct passes."""

    def __init__(self):
        self.direct = self.fallback = 0
        try:
            from daskglm.runtime.scheduling import DirectPasses
        except ImportError:
            DirectPasses = None
        self.cls = DirectPasses

    def __enter__(self):
        if self.cls is not None:
            self._orig = orig = self.cls.run

            def run(runner, local, poll):
                out = orig(runner, local, poll)
                if out is None:
                    self.fallback += 1
                else:
                    self.direct += 1
                return out

            self.cls.run = run
        return self

    def __exit__(self, *exc):
        if self.cls is not None:
            self.cls.run = self._orig


def run_cluster(client, data, x, repeat: int, direct: bool = True) -> dict:
    from distributed import get_task_stream

    best = None
    for r in range(repeat + 1):
        t0 = time.time()
        with (
            dask.config.set({"daskglm.direct-passes": direct}),
            PassClock() as clock,
            get_task_stream(client=client) as ts,
            DirectCount() as dc,
        ):
            res, secs = _fit(data, x, client=client)
        rows = _stream_breakdown(clock.windows, ts.data)
        if r and (best is None or secs < best["fit_s"]):
            best = _summary(res, secs, clock.windows, [row["tasks"] for row in rows])
            best["direct_passes"], best["task_fallbacks"] = dc.direct, dc.fallback
            best["passes_detail"] = rows
            best["eval_breakdown"] = _median_breakdown(rows)
            window = (t0, time.time())
    # the workers' and the scheduler's own statistical profiles over the best fit (10 ms samples)
    best["worker_profile_top"] = _profile_top(client.profile(start=window[0], stop=window[1]))
    best["scheduler_profile_top"] = _profile_top(
        client.profile(start=window[0], stop=window[1], scheduler=True)
    )
    with dask.config.set({"daskglm.direct-passes": direct}):
        best["client_profile_tottime"] = _client_profile(lambda: _fit(data, x, client=client))
    return best


def engine_name() -> str:
    try:
        from daskglm.kernels.engines import resolve_engine  # the compiled kernel's switch, when present
    except ImportError:
        return "numpy (no engine switch)"
    try:
        return str(resolve_engine(None))
    except Exception as err:  # noqa: BLE001 - record what the switch said
        return f"unknown ({err})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="200,200,50")
    p.add_argument("--chunks", default="peers", help="'peers' (simulate_panel's), 'demo' (50x50xk) or I,J,K")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--label", default="run")
    p.add_argument(
        "--no-tasks", action="store_true", help="skip 'cluster_tasks' (the cluster with direct passes off)"
    )
    p.add_argument("--out", default=str(Path(__file__).with_name("cluster_overhead.json")))
    a = p.parse_args()
    i, j, k = (int(s) for s in a.sizes.split(","))
    sizes = {"i": i, "j": j, "k": k}
    chunks = {"peers": None, "demo": {"i": 50, "j": 50}}.get(a.chunks)
    if chunks is None and a.chunks != "peers":
        chunks = dict(zip("ijk", (int(s) for s in a.chunks.split(",")), strict=True))
    ds = simulate_panel(sizes, "poisson", seed=2026, chunks=chunks)
    x = [v for v in ds.data_vars if v.startswith("x_")]
    cells = i * j * k
    engine = engine_name()
    print(
        f"panel {i}x{j}x{k} = {cells:.3g} cells, {len(x) + 1} coefficients, stored chunks "
        f"{ds.y.data.chunksize} ({ds.y.data.npartitions} chunks), engine {engine}",
        flush=True,
    )
    record = {
        "label": a.label,
        "panel": [i, j, k],
        "cells": cells,
        "coefficients": len(x) + 1,
        "stored_chunks": [list(c) for c in ds.y.data.chunks],
        "workers": a.workers,
        "engine": engine,
        "env_engine": os.environ.get("DASKGLM_ENGINE"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "dask": dask.__version__,
        "daskglm_code": os.environ.get("DASKGLM_CODE", str(Path(dg.__file__).parent)),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    settings = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/panel.zarr"
        ds.to_zarr(path, mode="w")
        mem = dask.persist(xr.open_zarr(path), scheduler="threads")[0]
        settings["threads"] = run_threads(mem, x, a.repeat)
        settings["threads_zarr"] = run_threads(path, x, a.repeat)
        from distributed import Client, LocalCluster, futures_of, wait

        with (
            LocalCluster(
                n_workers=a.workers, threads_per_worker=1, dashboard_address=":0", processes=True
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
            on_cluster = client.persist(xr.open_zarr(path))
            with client.as_current():
                wait(futures_of(on_cluster))
            settings["cluster"] = run_cluster(client, on_cluster, x, a.repeat)
            if not a.no_tasks:
                settings["cluster_tasks"] = run_cluster(client, on_cluster, x, a.repeat, direct=False)
            settings["cluster_zarr"] = run_cluster(client, path, x, a.repeat)
    ref = settings["threads"]
    params = {name: s.pop("params") for name, s in settings.items()}
    for name, s in settings.items():
        base = settings["threads_zarr"] if name.endswith("zarr") else ref
        s["fit_ratio_to_threads"] = s["fit_s"] / base["fit_s"]
        s["iteration_ratio_to_threads"] = (s["iteration_s"] or np.nan) / (base["iteration_s"] or np.nan)
        s["max_abs_param_diff"] = float(np.max(np.abs(np.subtract(params[name], params["threads"]))))
    record["settings"] = settings
    print(
        f"{'setting':<14}{'fit s':>8}{'ratio':>7}{'iter s':>8}{'ratio':>7}{'passes':>7}  tasks/pass  pass s"
    )
    for name, s in settings.items():
        ps = " ".join(f"{k}={v:.3f}" for k, v in s["pass_s"].items())
        tp = statistics.median(s["tasks_per_pass"]) if s["tasks_per_pass"] else 0
        print(
            f"{name:<14}{s['fit_s']:>8.3f}{s['fit_ratio_to_threads']:>7.2f}{s['iteration_s']:>8.3f}"
            f"{s['iteration_ratio_to_threads']:>7.2f}{s['passes']:>7}  {tp:>10}  {ps}"
        )
        if "direct_passes" in s:
            print(f"   direct passes {s['direct_passes']}, task fallbacks {s['task_fallbacks']}")
        if s.get("eval_breakdown"):
            print("   eval pass:", {k: round(v, 4) for k, v in s["eval_breakdown"].items()})
    if a.out:
        out = Path(a.out)
        runs = json.loads(out.read_text()) if out.exists() else {}
        runs[a.label] = record
        out.write_text(json.dumps(runs, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
