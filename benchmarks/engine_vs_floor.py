"""Both evaluation engines beside the floor: one plain dask pass over the same arrays.

    python benchmarks/engine_vs_floor.py [--cells 2e6,2e7] [--repeat 2] [--engines numpy,numba]
        [--no-zarr] [--local-ab] [--parts] [--cluster] [--out FILE.json] [--md FILE.md]

The panel: 3-D Poisson, 29 coefficients in 7 dim-blocks (full grid, (i,j), (i,k), (j,k), i, j,
k) plus the intercept, chunks of 100 x 100 x k. For each size and engine (``"numpy"``, the
reference kernel, and ``"numba"``, the compiled sweep of :mod:`daskglm.kernels.chunk_numba`):

* **kernel**: ns per cell of one evaluation (gradient and Hessian) of one chunk, single-threaded
  (the thread's CPU time, best of several), beside the floor's ns per cell;
* **in memory**: the arrays persisted on the threaded scheduler (two threads); seconds per Newton
  iteration (median over the fit's iterations, best of ``--repeat`` fits) and its ratio to the
  floor, one ``dask.compute`` of the sum of every full-grid array;
* **from zarr**: the same from a float32 zarr store on local disk (each pass reads it).

``--parts`` profiles one chunk's compiled evaluation instead (:func:`sweep_parts`); ``--cluster``
times the iteration and the floor with the panel persisted on a ``LocalCluster`` of two
one-thread workers (:func:`on_cluster`).

Writes ``engine_vs_floor.json`` and ``ENGINE.md`` (the before/after table) next to this script.
Run it under the shared lock (``flock /tmp/notes/bench.lock python benchmarks/engine_vs_floor.py``):
the timings of concurrent work are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from _tools import _floor as plain_pass_seconds  # benchmarks/ is the script's folder

import daskglm as dg
from daskglm.api.registry import resolve_family
from daskglm.api.simulate import simulate_panel
from daskglm.frontend.objective import run_setup
from daskglm.frontend.panel import build_panel
from daskglm.graph import passes as graph
from daskglm.kernels import chunk as kernels
from daskglm.kernels import chunk_numba as kernels_numba

warnings.simplefilter("ignore")

ENGINES = ("numpy", "numba")
#: panel shapes by number of cells (i, j, k); chunks are 100 x 100 x k
SHAPES = {200_000: (100, 100, 20), 2_000_000: (200, 200, 50), 20_000_000: (400, 500, 100)}


def floor_seconds(ds: xr.Dataset, repeat: int) -> float:
    """One plain dask pass over every full-grid array (best of ``repeat``): see ``_tools``."""
    return plain_pass_seconds([ds[v].data for v in ds.data_vars if ds[v].ndim == 3], max(repeat, 2))


def kernel_ns_per_cell(ds: xr.Dataset, x: list[str], engine: str, repeat: int = 7) -> float:
    """ns per cell of one chunk's evaluation pass with the Hessian, single-threaded (CPU time)."""
    panel = build_panel(ds, "y", x, resolve_family("poisson"))
    layout = run_setup(panel, graph.PassCounter()).layout
    chunk = [np.asarray(a.blocks[(0,) * a.ndim].compute()) for a in panel.arrays]
    params = np.zeros(layout.n_params)
    params[0] = 0.5
    func = kernels_numba.eval_chunk if engine == "numba" else kernels.eval_chunk
    func(layout, params, True, False, *chunk)  # compile / warm up
    best = np.inf
    for _ in range(repeat):
        t0 = time.thread_time()
        func(layout, params, True, False, *chunk)
        best = min(best, time.thread_time() - t0)
    return best * 1e9 / chunk[0].size


def seconds_per_iteration(data, x: list[str], engine: str, repeat: int) -> tuple[float, int, dg.GLMResults]:
    best, res = np.inf, None
    for _ in range(repeat):
        res = dg.fit(data, "y", x, "poisson", engine=engine, progress=False)
        secs = np.diff(res.history["seconds"].to_numpy())  # one pass per accepted iteration
        best = min(best, float(np.median(secs)))
    return best, int(res.n_iter), res


def local_ab(cells: int, fits: int = 4) -> dict:
    """In-memory Newton s/it with ``graph.LocalPass`` against the dask graph (``graph._local_pass``
    switched off), on one persisted panel in one process, the fits interleaved (median s/it
    of each fit, then the median over ``fits`` fits)."""
    i, j, k = SHAPES[cells]
    ds = simulate_panel({"i": i, "j": j, "k": k}, "poisson", seed=1, chunks={"i": 100, "j": 100})
    x = [v for v in ds.data_vars if v.startswith("x_")]
    mem = ds.persist()
    dg.fit(mem, "y", x, "poisson", progress=False)  # compile / warm up
    local = graph._local_pass
    out: dict = {"local": [], "dask": []}
    try:
        for _ in range(fits):
            for mode in out:
                graph._local_pass = local if mode == "local" else (lambda *a, **kw: None)
                res = dg.fit(mem, "y", x, "poisson", progress=False)
                out[mode].append(float(np.median(np.diff(res.history["seconds"].to_numpy()))))
    finally:
        graph._local_pass = local
    print(
        f"{cells:.0e} cells in memory, s/it: LocalPass {np.median(out['local']):.4f}, "
        f"dask graph {np.median(out['dask']):.4f}",
        flush=True,
    )
    return out


def _best_ns(func, cells: int, repeat: int = 7) -> float:
    """ns per cell of ``func()``, the least CPU time of this thread over ``repeat`` calls."""
    func()
    best = np.inf
    for _ in range(repeat):
        t0 = time.thread_time()
        func()
        best = min(best, time.thread_time() - t0)
    return best * 1e9 / cells


def sweep_parts(cells: int) -> dict:
    """Where one chunk's compiled evaluation (with the Hessian) spends its time, single-threaded
    (CPU ns per cell, best of 7): the whole call, the compiled sweep alone (``_sweep`` called
    with the arguments the kernel gave it), the sweep without its scatter-adds (the ``ops``
    table emptied) and also without the Hessian, the scatter-adds onto each target grid (the
    sweep with only that grid's ops, less the sweep without ops), and the numpy / Python work
    around the sweep (the call less the sweep); the final pass with and without the meat."""
    i, j, k = SHAPES[cells]
    ds = simulate_panel({"i": i, "j": j, "k": k}, "poisson", seed=1, chunks={"i": 100, "j": 100})
    x = [v for v in ds.data_vars if v.startswith("x_")]
    panel = build_panel(ds.persist(), "y", x, resolve_family("poisson"))
    layout = run_setup(panel, graph.PassCounter()).layout
    chunk = [np.asarray(a.blocks[(0,) * a.ndim].compute()) for a in panel.arrays]
    n = chunk[0].size
    params = np.zeros(layout.n_params)
    params[0] = 0.5
    out = {"chunk": list(chunk[0].shape)}
    out["evaluation"] = _best_ns(lambda: kernels_numba.eval_chunk(layout, params, True, False, *chunk), n)
    out["final, no meat"] = _best_ns(
        lambda: kernels_numba.eval_chunk(layout, params, True, True, *chunk, meat=False), n
    )
    out["final with meat"] = _best_ns(lambda: kernels_numba.eval_chunk(layout, params, True, True, *chunk), n)
    sweep, seen = kernels_numba._sweep, {}

    def spy(*args):
        seen["args"] = args
        return sweep(*args)

    kernels_numba._sweep = spy
    try:
        kernels_numba.eval_chunk(layout, params, True, False, *chunk)
    finally:
        kernels_numba._sweep = sweep
    names = sweep.py_func.__code__.co_varnames[: sweep.py_func.__code__.co_argcount]
    where = {name: pos for pos, name in enumerate(names)}
    ops = seen["args"][where["ops"]]

    def run(**changes):
        args = list(seen["args"])
        for key, value in changes.items():
            args[where[key]] = value
        return lambda: sweep(*args)

    out["sweep"] = _best_ns(run(), n)
    out["sweep without scatter-adds"] = _best_ns(run(ops=ops[:0]), n)
    out["sweep without scatter-adds or Hessian"] = _best_ns(run(ops=ops[:0], hessian=False), n)
    steps = seen["args"][where["S"]]
    for g in sorted(set(ops[:, 2].tolist())):
        mine = ops[ops[:, 2] == g]
        how = "a sum per row" if steps[g] == 0 else "along the rows"
        key = f"scatter-adds onto a {int(mine[0, 4])}-cell grid, {how} ({int(mine[:, 5].sum())} columns)"
        out[key] = _best_ns(run(ops=mine), n) - out["sweep without scatter-adds"]
    out["around the sweep (numpy, Python)"] = out["evaluation"] - out["sweep"]
    print(f"{cells:.0e} cells, one chunk {out['chunk']}, CPU ns/cell:")
    for key, value in out.items():
        if key != "chunk":
            print(f"  {key:66s} {value:6.2f}", flush=True)
    return out


def on_cluster(cells: int, repeat: int, workers: int = 2) -> dict:
    """In memory on a cluster, as the issue states the target: the panel persisted on a
    ``LocalCluster`` of ``workers`` one-thread worker processes; seconds per Newton iteration
    (numba, median over the fit's iterations, best of ``repeat`` fits) beside the floor, one
    plain dask pass reading every full-grid array once on the same cluster."""
    from distributed import Client, LocalCluster

    i, j, k = SHAPES[cells]
    ds = simulate_panel({"i": i, "j": j, "k": k}, "poisson", seed=1, chunks={"i": 100, "j": 100})
    x = [v for v in ds.data_vars if v.startswith("x_")]
    kw = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    with LocalCluster(**kw) as cluster, Client(cluster) as client:
        mem = client.persist(ds)
        dg.fit(mem, "y", x, "poisson", client=client, progress=False)  # workers load the kernels
        fl = floor_seconds(mem, max(repeat, 3))
        best, res = np.inf, None
        for _ in range(repeat):
            res = dg.fit(mem, "y", x, "poisson", client=client, progress=False)
            best = min(best, float(np.median(np.diff(res.history["seconds"].to_numpy()))))
    rec = {
        "cells": cells,
        "workers": workers,
        "chunks": list(ds.y.data.chunksize),
        "floor_s": fl,
        "iteration_s": best,
        "ratio": best / fl,
        "iterations": int(res.n_iter),
    }
    print(
        f"{cells:.0e} cells persisted on {workers} workers, numba: iteration {best:.3f}s  floor {fl:.3f}s  "
        f"ratio {best / fl:.2f}x  ({rec['iterations']} it.)",
        flush=True,
    )
    return rec


def run_size(
    cells: int, repeat: int, workdir: str, engines: tuple[str, ...] = ENGINES, zarr: bool = True
) -> dict:
    i, j, k = SHAPES[cells]
    ds = simulate_panel({"i": i, "j": j, "k": k}, "poisson", seed=1, chunks={"i": 100, "j": 100})
    x = [v for v in ds.data_vars if v.startswith("x_")]
    print(f"panel {i}x{j}x{k} = {cells:.3g} cells, {len(x) + 1} coefficients, chunks {ds.y.data.chunksize}")
    rec: dict = {"panel": [i, j, k], "cells": cells, "coefficients": len(x) + 1}
    rec["chunks"] = list(ds.y.data.chunksize)
    mem = ds.persist()
    fl = floor_seconds(mem, repeat)
    rec["floor_ns_per_cell"] = fl * 1e9 / cells
    rec["kernel_ns_per_cell"] = {e: kernel_ns_per_cell(mem, x, e) for e in engines}
    print(f"  kernel ns/cell: {rec['kernel_ns_per_cell']}  floor {rec['floor_ns_per_cell']:.2f} ns/cell")
    rec["in_memory"] = {"floor_s": fl}
    params = {}
    for e in engines:
        it, n, res = seconds_per_iteration(mem, x, e, repeat)
        params[e] = res.params
        rec["in_memory"][e] = {"iteration_s": it, "ratio": it / fl, "iterations": n}
        print(f"  in memory, {e:5s}: iteration {it:.3f}s  floor {fl:.3f}s  ratio {it / fl:.2f}x  ({n} it.)")
    if len(params) == 2:
        rec["max_abs_param_diff"] = float(np.max(np.abs(params["numba"] - params["numpy"])))
    if not zarr:
        return rec
    path = os.path.join(workdir, f"p{cells}.zarr")
    ds.astype("float32").to_zarr(path, mode="w")
    del mem
    disk = xr.open_zarr(path)
    fl = floor_seconds(disk, repeat)
    rec["from_zarr_float32"] = {"floor_s": fl}
    for e in engines:
        it, n, _ = seconds_per_iteration(path, x, e, repeat)
        rec["from_zarr_float32"][e] = {"iteration_s": it, "ratio": it / fl, "iterations": n}
        print(f"  from zarr, {e:5s}: iteration {it:.3f}s  floor {fl:.3f}s  ratio {it / fl:.2f}x  ({n} it.)")
    # the same store with the arrays off the full grid (small) held in memory: what re-reading
    # them from the store costs each pass
    small = xr.open_zarr(path)
    for v in small.data_vars:
        if small[v].ndim < 3:
            small[v] = small[v].load()
    it, n, _ = seconds_per_iteration(small, x, "numba", repeat)
    rec["from_zarr_float32"]["numba_small_in_memory"] = {"iteration_s": it, "ratio": it / fl, "iterations": n}
    print(f"  from zarr, numba, small arrays in memory: iteration {it:.3f}s  ratio {it / fl:.2f}x")
    shutil.rmtree(path, ignore_errors=True)
    return rec


def markdown(records: list[dict]) -> str:
    lines = [
        "# Evaluation engines beside the floor",
        "",
        "`python benchmarks/engine_vs_floor.py` (3-D Poisson, 29 coefficients in 7 dim-blocks, chunks",
        "100 x 100 x k, threaded scheduler with two threads on this 2-core machine). *before* is",
        '`engine="numpy"` (the reference kernel), *after* `engine="numba"` (the compiled sweep, the',
        "default). Kernel: one chunk's evaluation with the Hessian, single-threaded (CPU time). Newton:",
        "median seconds per iteration (one pass each) and its multiple of the floor, one plain dask",
        "pass reading every full-grid array once, on the same scheduler from the same place.",
        "",
        "| cells | where | floor s | numpy s/it | numpy x floor | numba s/it | numba x floor |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        for key, label in (("in_memory", "in memory"), ("from_zarr_float32", "zarr float32")):
            d = r[key]
            lines.append(
                f"| {r['cells']:.0e} | {label} | {d['floor_s']:.3f} | {d['numpy']['iteration_s']:.3f} | "
                f"{d['numpy']['ratio']:.2f} | {d['numba']['iteration_s']:.3f} | {d['numba']['ratio']:.2f} |"
            )
    lines += [
        "",
        "From zarr with the arrays off the full grid (the small blocks) loaded into memory first, numba: "
        + ", ".join(
            f"{d['iteration_s']:.3f} s/it, {d['ratio']:.2f}x the floor ({r['cells']:.0e} cells)"
            for r in records
            for d in [r["from_zarr_float32"]["numba_small_in_memory"]]
        )
        + ": every pass otherwise reads each small variable's chunks from the store again.",
    ]
    lines += ["", "| cells | kernel ns/cell numpy | kernel ns/cell numba | floor ns/cell (in memory) |"]
    lines += ["|---:|---:|---:|---:|"]
    for r in records:
        kn = r["kernel_ns_per_cell"]
        lines.append(
            f"| {r['cells']:.0e} | {kn['numpy']:.1f} | {kn['numba']:.1f} | {r['floor_ns_per_cell']:.2f} |"
        )
    lines += [
        "",
        "Largest difference between the two engines' estimates: "
        + ", ".join(f"{r['max_abs_param_diff']:.1e} ({r['cells']:.0e} cells)" for r in records)
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--cells", default="2e6,2e7", help="panel sizes, of " + ", ".join(f"{c:.0e}" for c in SHAPES)
    )
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--engines", default=",".join(ENGINES), help="engines to time (the table needs both)")
    p.add_argument("--no-zarr", action="store_true", help="in memory only (no store written or read)")
    p.add_argument("--local-ab", action="store_true", help="only the LocalPass / dask graph A/B in memory")
    p.add_argument("--parts", action="store_true", help="only the compiled kernel's parts on one chunk")
    p.add_argument(
        "--cluster", action="store_true", help="only in memory on a LocalCluster of two one-thread workers"
    )
    here = Path(__file__).parent
    p.add_argument("--out", default=str(here / "engine_vs_floor.json"), help="JSON record")
    p.add_argument("--md", default=str(here / "ENGINE.md"), help="markdown table")
    p.add_argument("--workdir", default=None, help="where the zarr stores go (default: a temporary folder)")
    a = p.parse_args()
    sizes = [int(float(c)) for c in a.cells.split(",")]
    if a.local_ab:
        for c in sizes:
            local_ab(c)
        return
    if a.parts:
        for c in sizes:
            sweep_parts(c)
        return
    if a.cluster:
        runs = [on_cluster(c, a.repeat) for c in sizes]
        if a.out:
            Path(a.out).write_text(json.dumps({"date": time.ctime(), "cluster": runs}, indent=1) + "\n")
        return
    workdir = a.workdir or tempfile.mkdtemp(prefix="engine_vs_floor_")
    engines = tuple(a.engines.split(","))
    records = [run_size(c, a.repeat, workdir, engines, not a.no_zarr) for c in sizes]
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.ctime(),
    }
    if a.out:
        Path(a.out).write_text(json.dumps({"meta": meta, "runs": records}, indent=1) + "\n")
    if a.md and set(engines) == set(ENGINES) and not a.no_zarr:
        md = Path(a.md)
        # keep the dated before/after sections ("## 2026-...") below the regenerated tables
        old = md.read_text() if md.exists() else ""
        cut = old.find("\n## 20")
        md.write_text(markdown(records) + (old[cut:] if cut >= 0 else ""))
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
