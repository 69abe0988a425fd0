"""daskglm beside the peers a user would otherwise pick: one command, one table, one plot.

    pip install -e ".[bench]"
    python benchmarks/peers.py                 # the full run (15-20 minutes on 2 cores)
    python benchmarks/peers.py --quick         # tiny panels, a smoke test of the harness

Each panel is simulated once with the project's simulator and written to a zarr store; the
peers get the same data in long format (``X.npy``, ``y.npy``, ``trials.npy``: one row per cell,
the covariates broadcast to the full grid, written slab by slab). Every fit runs in a process
of its own (``benchmarks/_tools.py``); this script samples the resident memory of that process
and all its children (daskglm's worker processes) every 50 ms and keeps the peak of the sum.
Seconds are the fit alone (imports and data loading excluded, for every tool); the peak memory
includes the loaded data, as a user would see it.

Before a peer runs at a size, its peak memory and time are extrapolated linearly from its two
previous sizes; it is skipped, with the reason in the table, when that exceeds the budget
(``--memory-budget``, ``--time-budget``). A peer that fails or runs out of time is reported
as such. Results: ``benchmarks/RESULTS.md``, ``benchmarks/results.json``,
``benchmarks/peers.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import xarray as xr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import write_plot, write_results  # noqa: E402

from daskglm.api.simulate import simulate_panel  # noqa: E402

GB = 1e9
#: the threaded daskglm fit is timed a second time in its process up to this size (warm_seconds)
WARM_MAX_CELLS = 10**7
warnings.filterwarnings("ignore", message="Consolidated metadata")
PEERS = {
    "poisson": ["statsmodels", "glum", "dask-glm", "pyfixest"],
    "negative_binomial": ["statsmodels", "glum"],
    "binomial": ["statsmodels", "glum"],
}
UNSUPPORTED = {
    ("negative_binomial", "dask-glm"): "dask-glm has no negative binomial family",
    ("negative_binomial", "pyfixest"): "pyfixest has no NB2 model with alpha estimated",
    ("binomial", "dask-glm"): "dask-glm's logistic regression takes 0/1 outcomes only (no trials)",
    ("binomial", "pyfixest"): "pyfixest's feglm logit takes 0/1 outcomes only (no trials)",
}


@dataclass
class Scenario:
    number: int
    title: str
    family: str
    sizes: list[tuple[int, int, int]]
    tools: list[str]
    dtype: str = "float64"
    cluster: dict = field(default_factory=dict)


def scenarios(quick: bool) -> list[Scenario]:
    s1 = [(90, 100, 50), (200, 200, 50), (200, 200, 250), (500, 400, 250)]
    s4 = (800, 500, 500)
    if quick:
        s1, s4 = [(20, 20, 10), (40, 30, 10)], (60, 50, 20)
    mid = [s1[1]]
    both = ["daskglm", "daskglm-cluster"]
    return [
        Scenario(1, "3-D Poisson, 28 coefficients in 7 dim-blocks", "poisson", s1, both + PEERS["poisson"]),
        Scenario(2, "NB2, alpha estimated", "negative_binomial", mid, both + PEERS["negative_binomial"]),
        Scenario(3, "Binomial logit with trials", "binomial", mid, both + PEERS["binomial"]),
        Scenario(
            4,
            "Out-of-core: float32 zarr, streamed by 2 workers x 2 GB",
            "poisson",
            [s4],
            ["daskglm-cluster"],
            dtype="float32",
            cluster={"n_workers": 2, "memory_limit": "1GB" if quick else "2GB"},
        ),
        Scenario(
            5,
            "Strong scaling: 1 vs 2 workers (persisted)",
            "poisson",
            [s1[min(2, len(s1) - 1)]],
            ["daskglm-cluster:1", "daskglm-cluster:2"],
        ),
    ]


# --------------------------------------------------------------------------- data
def make_store(root: Path, family: str, shape: tuple[int, int, int], dtype: str) -> tuple[str, list[str]]:
    """Simulate a panel once and write it to zarr; reuses the store if it exists."""
    path = root / f"{family}_{'x'.join(map(str, shape))}_{dtype}.zarr"
    sizes = dict(zip("ijk", shape, strict=True))
    ds = simulate_panel(sizes, family, seed=2026, dtype=np.dtype(dtype))
    x = [v for v in ds.data_vars if v.startswith("x_")]
    if not path.exists():
        t0 = time.perf_counter()
        ds.to_zarr(path, mode="w")
        print(f"  wrote {path.name} in {time.perf_counter() - t0:.0f}s", flush=True)
    return str(path), x


def write_long(store: str, x: list[str], out: Path) -> dict:
    """The panel as one row per cell (float64 ``.npy`` files), written slab by slab."""
    files = {"X": str(out / "X.npy"), "y": str(out / "y.npy")}
    if Path(files["X"]).exists():
        if (out / "trials.npy").exists():
            files["trials"] = str(out / "trials.npy")
        return files
    out.mkdir(parents=True, exist_ok=True)
    ds = xr.open_zarr(store)
    dims = ds["y"].dims
    n = ds["y"].size
    X = np.lib.format.open_memmap(files["X"], mode="w+", dtype=np.float64, shape=(n, len(x)))
    y = np.lib.format.open_memmap(files["y"], mode="w+", dtype=np.float64, shape=(n,))
    trials = None
    if "trials" in ds:
        files["trials"] = str(out / "trials.npy")
        trials = np.lib.format.open_memmap(files["trials"], mode="w+", dtype=np.float64, shape=(n,))
    per_row = n // ds.sizes[dims[0]]
    step = max(1, 2**22 // per_row)
    for start in range(0, ds.sizes[dims[0]], step):
        sub = ds.isel({dims[0]: slice(start, start + step)}).load()
        r0, r1 = start * per_row, start * per_row + sub["y"].size
        y[r0:r1] = sub["y"].to_numpy().ravel()
        for c, name in enumerate(x):
            X[r0:r1, c] = sub[name].broadcast_like(sub["y"]).transpose(*dims).to_numpy().ravel()
        if trials is not None:
            trials[r0:r1] = sub["trials"].broadcast_like(sub["y"]).transpose(*dims).to_numpy().ravel()
    X.flush()
    y.flush()
    return files


# --------------------------------------------------------------------------- running
def run_tool(spec: dict, work: Path, timeout: float) -> dict:
    """Run one fit in its own process; wall seconds and peak summed RSS of the process tree."""
    spec_path = work / f"spec-{time.monotonic_ns()}.json"
    spec["out"] = str(spec_path.with_suffix(".out.json"))
    spec_path.write_text(json.dumps(spec))
    load = os.getloadavg()[0]  # how busy the (shared) machine was when this fit started
    err_path = spec_path.with_suffix(".err")
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / "_tools.py"), str(spec_path)], stderr=err)
        root = psutil.Process(proc.pid)
        peak, t0, status = 0, time.perf_counter(), "ok"
        tree, listed = [root], 0.0
        while proc.poll() is None:
            try:
                if time.perf_counter() - listed > 0.5:  # the process tree changes rarely
                    tree, listed = [root, *root.children(recursive=True)], time.perf_counter()
                rss = 0
                for p in tree:
                    try:
                        rss += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            if time.perf_counter() - t0 > timeout:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        p.kill()
                    except psutil.Error:
                        pass
                status = f"killed after {timeout:.0f}s (time budget)"
                break
            time.sleep(0.05)
        proc.wait()
    wall = time.perf_counter() - t0
    row = {"peak_gb": peak / GB, "wall_seconds": wall, "status": status, "load_1min": load}
    if status == "ok" and proc.returncode != 0:
        lines = [ln for ln in err_path.read_text().splitlines() if ln.strip()]
        row["status"] = f"failed (exit {proc.returncode}): {lines[-1][:160] if lines else 'no message'}"
    if row["status"] == "ok":
        row.update(json.loads(Path(spec["out"]).read_text()))
    return row


def extrapolate(history: list[tuple[int, float, float]], cells: int) -> tuple[float, float] | None:
    """Linear extrapolation of (peak GB, seconds) from the two largest sizes measured."""
    if len(history) < 2:
        return None
    (n0, m0, s0), (n1, m1, s1) = history[-2:]
    slope = lambda a, b: max((b - a) / (n1 - n0), 0.0)
    return m1 + slope(m0, m1) * (cells - n1), s1 + slope(s0, s1) * (cells - n1)


def max_diff(params: dict, ref: dict) -> float:
    common = [k for k in ref if k in params]
    return max(abs(params[k] - ref[k]) for k in common) if common else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny panels: a smoke test of the harness")
    ap.add_argument("--scenarios", default="1,2,3,4,5")
    ap.add_argument(
        "--cells",
        default=None,
        help="run only the sizes with these cell counts (comma-separated, e.g. 2e6; within 10%%)",
    )
    ap.add_argument(
        "--tools",
        default=None,
        help="run only these tools (comma-separated, e.g. daskglm,glum,statsmodels; NB2's glum "
        "needs daskglm's alpha, so daskglm runs in scenario 2 whenever glum does)",
    )
    ap.add_argument("--memory-budget", type=float, default=16.0, help="GB a peer may be expected to use")
    ap.add_argument("--time-budget", type=float, default=900.0, help="seconds a single fit may take")
    ap.add_argument("--workdir", default=None, help="where stores and long files go (default: a temp dir)")
    ap.add_argument("--out", default=str(HERE), help="folder for RESULTS.md, results.json, peers.png")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other scenarios' rows of an existing results.json (rerun only --scenarios)",
    )
    args = ap.parse_args()
    wanted = {int(s) for s in args.scenarios.split(",")}
    cells_wanted = None if args.cells is None else [float(c) for c in args.cells.split(",")]
    tools_wanted = None if args.tools is None else set(args.tools.split(","))
    tmp = tempfile.TemporaryDirectory(prefix="daskglm-bench-") if args.workdir is None else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    history: dict[tuple[int, str], list[tuple[int, float, float]]] = {}
    started = time.perf_counter()
    load_start, clock_start = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for sc in scenarios(args.quick):
        if sc.number not in wanted:
            continue
        print(f"scenario {sc.number}: {sc.title}", flush=True)
        for shape in sc.sizes:
            cells = int(np.prod(shape))
            if cells_wanted is not None and not any(abs(cells - c) <= 0.1 * c for c in cells_wanted):
                continue
            store, x = make_store(work, sc.family, shape, sc.dtype)
            base = {"family": sc.family, "store": store, "x": x}
            ref = None
            long_files = None
            unsupported = [t for (f, t) in UNSUPPORTED if f == sc.family and sc.number in (2, 3)]
            for tool_key in sc.tools + unsupported:
                tool, _, workers = tool_key.partition(":")
                if tools_wanted is not None and tool_key not in tools_wanted and tool not in tools_wanted:
                    nb2_ref = tool_key == "daskglm" and sc.family == "negative_binomial"
                    if not (nb2_ref and "glum" in tools_wanted):
                        continue
                row = {"scenario": sc.number, "title": sc.title, "cells": cells, "shape": shape}
                row["tool"] = tool_key
                if (sc.family, tool) in UNSUPPORTED:
                    rows.append({**row, "status": "not run: " + UNSUPPORTED[(sc.family, tool)]})
                    continue
                spec = {**base, "tool": tool, **sc.cluster}
                if tool_key == "daskglm" and cells <= WARM_MAX_CELLS:
                    spec["warm"] = True
                if workers:
                    spec["n_workers"] = int(workers)
                if not tool.startswith("daskglm"):
                    past = history.get((sc.number, tool), [])
                    guess = extrapolate(past, cells)
                    if guess and (guess[0] > args.memory_budget or guess[1] > args.time_budget):
                        rows.append(
                            {
                                **row,
                                "status": f"skipped: extrapolated {guess[0]:.1f} GB, {guess[1]:.0f} s "
                                f"from its two smaller runs (budget {args.memory_budget:.0f} GB, "
                                f"{args.time_budget:.0f} s)",
                            }
                        )
                        continue
                    if past and past[-1][0] < 0:  # failed at a smaller size
                        rows.append({**row, "status": "skipped: failed at a smaller size"})
                        continue
                    if long_files is None:
                        long_files = write_long(store, x, work / Path(store).stem)
                    spec.update(long_files)
                    if sc.family == "negative_binomial":
                        spec["alpha"] = ref["alpha"]
                print(f"  {cells:.2g} cells  {tool_key:18s}", end=" ", flush=True)
                out = run_tool(spec, work, args.time_budget)
                row.update(out)
                if out["status"] == "ok":
                    if tool_key == "daskglm" or ref is None:  # else the scenario's first fit
                        ref = out["params"]
                    if ref is not None:
                        row["max_abs_diff"] = max_diff(out["params"], ref)
                    history.setdefault((sc.number, tool), []).append(
                        (cells, out["peak_gb"], out["fit_seconds"])
                    )
                    print(
                        f"{out['fit_seconds']:8.2f}s  {out['peak_gb']:6.2f} GB  "
                        f"max|diff| {row.get('max_abs_diff', float('nan')):.1e}",
                        flush=True,
                    )
                else:
                    history.setdefault((sc.number, tool), []).append((-1, 0.0, 0.0))
                    print(out["status"], flush=True)
                rows.append(row)
            if long_files is not None:  # free the disk before the next (larger) panel
                for f in long_files.values():
                    os.remove(f)
    meta = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / GB:.0f} GB RAM, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": _versions(),
        "code": _code_origin(),
        "command": " ".join(["python benchmarks/peers.py", *sys.argv[1:]]),
        "minutes": (time.perf_counter() - started) / 60,
        "started": clock_start,
        "ended": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
    }
    out_dir = Path(args.out)
    if args.merge and (out_dir / "results.json").exists():
        before = json.loads((out_dir / "results.json").read_text())
        kept = [r for r in before["rows"] if r["scenario"] not in wanted]
        rows = sorted(kept + rows, key=lambda r: r["scenario"])  # stable: sizes stay in order
        meta["minutes"] += before["meta"]["minutes"]
        meta["command"] += f" (scenarios {args.scenarios} rerun with --merge)"
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    write_results(rows, meta, out_dir / "RESULTS.md")
    write_plot(rows, out_dir / "peers.png")
    print(f"wrote {out_dir / 'RESULTS.md'} and {out_dir / 'peers.png'}")
    if tmp is not None:
        tmp.cleanup()


def _code_origin() -> str:
    """Where the daskglm that ran comes from: its folder, and the git commit when it is a checkout
    (else ``$DASKGLM_COMMIT``, set by whoever ran an exported snapshot)."""
    import daskglm

    folder = Path(daskglm.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "daskglm"], capture_output=True, text=True
        ).stdout.strip()
        commit += " (with uncommitted changes to daskglm/)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("DASKGLM_COMMIT", "unknown commit")
    return f"{folder}, {commit}"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("daskglm", "dask", "distributed", "numpy", "statsmodels", "glum", "dask-glm", "pyfixest"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


if __name__ == "__main__":
    main()
