"""Passes over the data, wall time and distance to Newton for every solver, on one panel each.

    python benchmarks/solvers.py [--sizes 100,100,50] [--out benchmarks/SOLVERS.md]

Two simulated 3-D panels with the project's simulator (28 coefficients in 7 dim-blocks): a
Poisson panel with an exposure, and an NB2 panel with alpha estimated. The full-grid arrays are
persisted in memory and the threaded scheduler is used, so the figures are about the solvers
(passes and their cost), not about reading zarr. For each solver the table gives iterations,
passes over the data (setup, start, iterations, line-search trials, final), seconds, seconds per
pass, and the largest relative difference of any coefficient (and alpha) from the Newton fit.
"""

from __future__ import annotations

import argparse
import time
import warnings

import dask
import numpy as np

import daskglm as dg
from daskglm.registry import SOLVERS
from daskglm.simulate import simulate_panel


def run(sizes: dict[str, int], family: str) -> list[dict]:
    exposure = family == "poisson"
    ds = simulate_panel(sizes, family, seed=3, exposure=exposure, chunks={"i": 25})
    ds = dask.persist(ds)[0]
    x = [v for v in ds.data_vars if v.startswith("x_")]
    fam = dg.NegativeBinomial(alpha=None) if family == "negative_binomial" else family
    kw = {"exposure": "exposure"} if exposure else {}
    rows, newton = [], None
    for solver in SOLVERS:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = dg.fit(ds, "y", x, fam, solver=solver, **kw)
        seconds = time.perf_counter() - t0
        if solver == "newton":
            newton = res
        b, b0 = res.params.to_numpy(), newton.params.to_numpy()
        diff = float(np.max(np.abs(b - b0) / np.abs(b0)))
        if family == "negative_binomial":
            diff = max(diff, abs(res.alpha - newton.alpha) / newton.alpha)
        rows.append(
            {
                "panel": f"{family} {'x'.join(map(str, sizes.values()))}",
                "solver": solver,
                "converged": res.converged,
                "iterations": res.n_iter,
                "passes": res.passes,
                "seconds": seconds,
                "s/pass": seconds / res.passes,
                "max rel diff vs newton": diff,
                "warnings": "; ".join(str(w.message)[:60] for w in caught),
            }
        )
        print(rows[-1], flush=True)
    return rows


def to_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                v = f"{v:.2e}" if c.startswith("max") else f"{v:.3g}"
            cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,100,50", help="i,j,k lengths")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    args = ap.parse_args()
    i, j, k = (int(v) for v in args.sizes.split(","))
    sizes = {"i": i, "j": j, "k": k}
    rows = run(sizes, "poisson") + run(sizes, "negative_binomial")
    table = to_markdown(rows)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Solvers on {i}x{j}x{k} panels (`python benchmarks/solvers.py`)\n\n{table}\n")


if __name__ == "__main__":
    main()
