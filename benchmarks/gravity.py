"""Gravity PPML with exporter-year, importer-year and pair fixed effects: daskglm beside pyfixest.

``python benchmarks/gravity.py [--sizes 100x20,200x50,500x40] [--out benchmarks/gravity.json]``

Each size is an ``exporter x importer x year`` grid (``NxT``: N countries, T years) with three
full-grid covariates and a Poisson response drawn from effects of all three kinds. The data are
written once to an ``.npz``; each tool then runs in a process of its own, loads them the way it
needs them (daskglm: an in-memory ``xarray.Dataset``; pyfixest: the long ``DataFrame``), warms
up (numba compilation for pyfixest, a small fit for both) and fits once. Reported: the fit's
seconds (loading excluded), the process's peak RSS (loading included, as a user would see it),
passes and Newton iterations for daskglm, and the largest difference between the estimates.
Results go to ``benchmarks/gravity.json`` and the table at the top of ``benchmarks/GRAVITY.md``
(the file's part below the ``KEEP`` marker is left as it is).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: GRAVITY.md from this line on is not rewritten by a run
KEEP = "<!-- kept by benchmarks/gravity.py: everything below is written by hand -->"
FE = [("i", "t"), ("j", "t"), ("i", "j")]


def make_data(path: Path, n: int, t: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shape = (n, n, t)
    X = [rng.normal(size=shape) for _ in range(3)]
    eta = (
        0.2 * X[0]
        - 0.1 * X[1]
        + 0.05 * X[2]
        + rng.normal(scale=0.5, size=(n, 1, t))
        + rng.normal(scale=0.5, size=(1, n, t))
        + rng.normal(scale=0.5, size=(n, n, 1))
    )
    y = rng.poisson(np.exp(eta)).astype(float)
    np.savez(path, y=y, x1=X[0], x2=X[1], x3=X[2])


def _dataset(d):
    import xarray as xr

    dims = ("i", "j", "t")
    return xr.Dataset({k: (dims, d[k]) for k in ("y", "x1", "x2", "x3")})


def run_daskglm(path: str) -> dict:
    import daskglm as dg

    d = dict(np.load(path))
    ds = _dataset(d)
    dg.fit(ds.isel(i=slice(0, 10), j=slice(0, 10)), "y", ["x1", "x2", "x3"], "poisson", fe=FE, progress=False)
    t0 = time.perf_counter()
    res = dg.fit(ds, "y", ["x1", "x2", "x3"], "poisson", fe=FE, cov_type="nonrobust", progress=False)
    secs = time.perf_counter() - t0
    kinds: dict = {}
    for what, sec in res._counter.log:  # passes by kind: count and seconds
        count, total = kinds.get(what, (0, 0.0))
        kinds[what] = (count + 1, total + sec)
    return {
        "fit_seconds": secs,
        "params": res.params.to_list(),
        "bse": res.bse.to_list(),
        "nobs": res.nobs,
        "passes": res.passes,
        "newton_iterations": res.n_iter,
        "inner_iterations": res.inner_iterations,
        "pass_kinds": {k: {"count": c, "seconds": round(t, 3)} for k, (c, t) in kinds.items()},
    }


def run_pyfixest(path: str, backend: str = "rust") -> dict:
    import warnings

    import pyfixest as pf

    warnings.simplefilter("ignore")
    d = dict(np.load(path))
    df = _dataset(d).to_dataframe().reset_index()
    del d
    fml = "y ~ x1 + x2 + x3 | i^t + j^t + i^j"
    kw = {} if backend == "rust" else {"demeaner_backend": backend}
    pf.fepois(fml, data=df[(df["i"] < 10) & (df["j"] < 10)], **kw)  # warm-up (numba compilation)
    t0 = time.perf_counter()
    m = pf.fepois(fml, data=df, vcov="iid", **kw)
    secs = time.perf_counter() - t0
    return {
        "fit_seconds": secs,
        "params": m.coef().to_list(),
        "bse": m.se().to_list(),
        "nobs": int(m._N),
        "backend": backend,
    }


def _peak_rss_gb() -> float:
    """This process's own high-water mark (``ru_maxrss`` of a child can report its parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def child(tool: str, path: str) -> None:
    runs = {
        "daskglm": run_daskglm,
        "pyfixest": run_pyfixest,
        "pyfixest-numba": lambda p: run_pyfixest(p, "numba"),
    }
    out = runs[tool](path)
    out["peak_rss_gb"] = _peak_rss_gb()
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100x20,200x50", help="NxT grids, comma-separated")
    ap.add_argument("--out", default=str(HERE / "gravity.json"))
    ap.add_argument("--child", nargs=2, metavar=("TOOL", "NPZ"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            n, t = map(int, size.split("x"))
            path = Path(tmp) / f"gravity_{n}x{t}.npz"
            make_data(path, n, t)
            row = {"cells": n * n * t, "grid": f"{n} x {n} x {t}", "levels": 2 * n * t + n * n}
            # pyfixest's default (rust) demeaner; where it fails, its numba one
            for tool, child_tool in (
                ("daskglm", "daskglm"),
                ("pyfixest", "pyfixest"),
                ("pyfixest", "pyfixest-numba"),
            ):
                if tool in row and "error" not in row[tool]:
                    continue
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", child_tool, str(path)],
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                    errors = row.get(tool, {}).get("errors", []) + [f"{child_tool}: {' / '.join(lines[-3:])}"]
                    row[tool] = {"error": True, "errors": errors}
                    continue
                row[tool] = {
                    **json.loads(proc.stdout.strip().splitlines()[-1]),
                    **({"errors": row[tool]["errors"]} if tool in row else {}),
                }
            a, b = row["daskglm"], row["pyfixest"]
            if "params" in a and "params" in b:
                row["max_param_diff"] = float(np.max(np.abs(np.subtract(a["params"], b["params"]))))
                row["max_bse_rel_diff"] = float(np.max(np.abs(np.divide(a["bse"], b["bse"]) - 1)))
                row["time_ratio"] = a["fit_seconds"] / b["fit_seconds"]
                row["memory_ratio"] = a["peak_rss_gb"] / b["peak_rss_gb"]
            rows.append(row)
            print(json.dumps(row))
    Path(args.out).write_text(json.dumps(rows, indent=1))
    lines = [
        "# Gravity PPML with three fixed effects: daskglm beside pyfixest",
        "",
        "`python benchmarks/gravity.py` (one process per tool; fit seconds after a warm-up; peak RSS of",
        "the process). exporter-year, importer-year and pair effects, three full-grid covariates,",
        "2 cores, dask's threaded scheduler for daskglm.",
        "",
        "| cells | levels | daskglm fit | pyfixest fit | time ratio | daskglm peak | pyfixest peak | "
        "memory ratio | passes (Newton its) | max param diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, b = r["daskglm"], r["pyfixest"]
        if "time_ratio" not in r:
            lines.append(f"| {r['cells']:.0e} | {r['levels']} | {a} | {b} | | | | | | |")
            continue
        lines.append(
            f"| {r['cells']:.0e} | {r['levels']} | {a['fit_seconds']:.2f} s | {b['fit_seconds']:.2f} s | "
            f"{r['time_ratio']:.2f} | {a['peak_rss_gb']:.2f} GB | {b['peak_rss_gb']:.2f} GB | "
            f"{r['memory_ratio']:.2f} | {a['passes']} ({a['newton_iterations']}) | "
            f"{r['max_param_diff']:.1e} |"
        )
    lines.append("")
    # the rest of the file (notes, earlier runs, the out-of-core section) is kept as it is
    doc = HERE / "GRAVITY.md"
    old = doc.read_text() if doc.exists() else ""
    kept = old[old.index(KEEP) :] if KEEP in old else KEEP + "\n"
    doc.write_text("\n".join(lines) + "\n" + kept)


if __name__ == "__main__":
    main()
