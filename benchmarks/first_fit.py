"""The first fit in a fresh process against the second, per family (``benchmarks/FIRST_FIT.md``).

    python benchmarks/first_fit.py --workdir /tmp/ff_work
    python benchmarks/first_fit.py --code before=/tmp/snap_before --code after=/tmp/snap_after --reps 3

Each fit runs in a process of its own, timed as ``benchmarks/_tools.py`` times daskglm for the
peers table: the peers' 2e6-cell panels (``peers.make_store``: 200 x 200 x 50, 28 covariates in
7 dim-blocks, float64) persisted in memory, then ``fit`` timed, then the same fit again in the
process (``warm``). Two orders: ``import, load, fit`` (``from daskglm import fit``, then the data
read, then the fit: what the peers table times) and ``fit at once`` (the data read first, the
import and the fit straight after it: nothing for a background load to overlap). ``--code``
names one or more checkouts (``git archive`` snapshots) run in alternation, through
``PYTHONPATH``; by default the daskglm that imports here. Writes ``--out`` (JSON) and prints a
table of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = ("poisson", "negative_binomial", "binomial")
MODES = ("import, load, fit", "fit at once")


def child(store: str, family: str, mode: str) -> dict:
    """One fresh-process measurement (run by the parent in a subprocess)."""
    import dask
    import xarray as xr

    def load():
        return dask.persist(xr.open_zarr(store), scheduler="threads")[0]

    ds = load() if mode == "fit at once" else None
    import daskglm as dg
    from daskglm import fit

    def fam():
        if family == "negative_binomial":
            return dg.NegativeBinomial(alpha=None)
        if family == "binomial":
            return dg.Binomial(trials="trials")
        return family

    f = fam()
    if ds is None:
        ds = load()
    x = [v for v in ds.data_vars if v.startswith("x_")]
    t0 = time.perf_counter()
    res = fit(ds, "y", x, f, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = fit(ds, "y", x, fam(), progress=False)
    warm = time.perf_counter() - t0
    return {
        "first": first,
        "warm": warm,
        "setup_first": res._counter.log[0][1],
        "setup_warm": again._counter.log[0][1],
        "passes": int(res.passes),
        "params": {k: float(v) for k, v in res.params.items()},
        "load_1min": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/daskglm-first-fit", help="where the stores go (reused)")
    ap.add_argument("--code", action="append", default=[], help="NAME=PATH of a checkout (repeatable)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON of every run (default: WORKDIR/first_fit.json)")
    ap.add_argument("--child", nargs=3, metavar=("STORE", "FAMILY", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    sys.path.insert(0, str(HERE))
    from peers import make_store

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    stores = {f: make_store(work, f, (200, 200, 50), "float64")[0] for f in FAMILIES}
    codes = dict(c.split("=", 1) for c in args.code) or {"here": ""}
    rows = []
    for rep in range(args.reps):
        for family in FAMILIES:
            for mode in MODES:
                for name, path in codes.items():
                    env = dict(os.environ)
                    if path:
                        env["PYTHONPATH"] = path
                    cmd = [sys.executable, str(HERE / "first_fit.py"), "--child", stores[family]]
                    cmd += [family, mode]
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd="/")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append({"code": name, "rep": rep, "family": family, "mode": mode, **r})
                    print(f"{name:8s} {family:18s} {mode:18s} first {r['first']:.3f} s, warm {r['warm']:.3f}")
    out = Path(args.out or work / "first_fit.json")
    out.write_text(json.dumps({"codes": codes, "rows": rows}, indent=1))
    print("\n| family | mode | code | first fit s | median | setup pass, first fit | second fit |")
    print("|---|---|---|---|---|---|---|")
    for family in FAMILIES:
        for mode in MODES:
            for name in codes:
                rs = [r for r in rows if (r["family"], r["mode"], r["code"]) == (family, mode, name)]
                firsts = [r["first"] for r in rs]
                setup = statistics.median(r["setup_first"] for r in rs)
                print(
                    f"| {family} | {mode} | {name} | {', '.join(f'{v:.2f}' for v in firsts)} | "
                    f"{statistics.median(firsts):.2f} | {setup:.3f} | "
                    f"{statistics.median(r['warm'] for r in rs):.2f} |"
                )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
