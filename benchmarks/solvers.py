"""Passes over the data, wall time and distance to Newton for every solver, on real and simulated data.

    python benchmarks/solvers.py [--sizes 100,100,50] [--skip-panels] [--out benchmarks/SOLVERS.md]

Real data (statsmodels' shipped data sets, as ``tests/test_published.py`` loads them, and the
NIST StRD polynomial regressions when ``/work/shared/reference/nist-strd`` or ``--nist DIR``
holds them): Star98 (binomial with trials, 21 coefficients), Cpunish (Poisson), RAND HIE
(Poisson, and NB2 with alpha estimated), Norris, Pontius and Wampler1-5 (Gaussian, x..x^5).

Simulated: two 3-D panels with the project's simulator (28 coefficients in 7 dim-blocks), a
Poisson panel with an exposure and an NB2 panel with alpha estimated, persisted in memory on
the threaded scheduler, so the figures are about the solvers (passes and their cost), not about
reading zarr.

For each solver the tables give iterations, passes over the data (setup, start, iterations,
line-search trials, preconditioner rebuilds, final), seconds, the largest relative difference
of any coefficient (and alpha) from the Newton fit, and the log-likelihood gap to Newton's.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import statsmodels.api as sm
import xarray as xr

import daskglm as dg
from daskglm.api.registry import SOLVERS
from daskglm.api.simulate import simulate_panel

NIST_DIR = Path("/work/shared/reference/nist-strd")
#: NIST StRD linear regressions (Gaussian, x .. x^p; NoInt1/2 without an intercept)
NIST_SETS = ["Norris", "Pontius", "NoInt1", "NoInt2", *(f"Wampler{k}" for k in range(1, 6)), "Filip"]


def _panel(exog: pd.DataFrame, **extra) -> xr.Dataset:
    data = {c: ("obs", exog[c].to_numpy(dtype=float)) for c in exog.columns}
    data.update({k: ("obs", np.asarray(v, dtype=float)) for k, v in extra.items()})
    return xr.Dataset(data)


def real_data(nist_dir: Path) -> dict[str, tuple]:
    """name -> (dataset, covariates, family, fit options, NIST's certified estimates or None)."""
    out = {}
    d = sm.datasets.star98.load()
    above, below = d.endog["NABOVE"], d.endog["NBELOW"]
    star98 = _panel(d.exog, y=above, n=above + below)
    out["star98"] = (star98, list(d.exog.columns), dg.Binomial(trials="n"), {}, None)
    d = sm.datasets.cpunish.load()
    exog = d.exog.copy()
    exog[exog.columns[3]] = np.log(exog[exog.columns[3]])
    out["cpunish"] = (_panel(exog, y=d.endog), list(exog.columns), "poisson", {}, None)
    d = sm.datasets.randhie.load()
    ds = _panel(d.exog, y=d.endog)
    out["randhie poisson"] = (ds, list(d.exog.columns), "poisson", {}, None)
    out["randhie nb2"] = (ds, list(d.exog.columns), dg.NegativeBinomial(alpha=None), {}, None)
    for name in NIST_SETS:
        if not (nist_dir / f"{name}.json").exists():
            continue
        meta = json.loads((nist_dir / f"{name}.json").read_text())
        df = pd.read_csv(nist_dir / f"{name}.csv", dtype=str)
        x = df["x"].astype(float).to_numpy()
        exog = pd.DataFrame({("x" if p == 1 else f"x{p}"): x**p for p in meta["powers"] if p > 0})
        certified = [q["estimate"]["value"] for q in meta["certified"]["parameters"]]
        kw = {"intercept": meta["intercept"]}
        out[name] = (_panel(exog, y=df["y"].astype(float)), list(exog.columns), "gaussian", kw, certified)
    return out


def nist_digits(est, cert) -> float:
    """NIST's log relative error: the fewest correct digits over the estimates (at most 15)."""
    est, cert = np.asarray(est, float), np.asarray(cert, float)
    err = np.abs(est - cert) / np.where(cert == 0, 1.0, np.abs(cert))
    with np.errstate(divide="ignore"):
        return float(np.clip(np.where(err == 0, 15.0, -np.log10(err)), 0.0, 15.0).min())


def fit_all(label: str, ds, x, fam, certified=None, **kw) -> list[dict]:
    """Every registered solver on one data set; Newton first (the reference). With NIST's
    ``certified`` estimates, also the correct digits of each solver's estimates."""
    rows, newton = [], None
    for solver in ["newton", *[s for s in SOLVERS if s != "newton"]]:
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = dg.fit(ds, "y", x, fam, solver=solver, progress=False, **kw)
        seconds = time.perf_counter() - t0
        if solver == "newton":
            newton = res
        b, b0 = res.params.to_numpy(), newton.params.to_numpy()
        diff = float(np.max(np.abs(b - b0) / np.abs(b0)))
        if getattr(fam, "name", fam) == "negative_binomial":
            diff = max(diff, abs(res.alpha - newton.alpha) / newton.alpha)
        rows.append(
            {
                "data": label,
                "solver": solver,
                "converged": res.converged,
                "iterations": res.n_iter,
                "passes": res.passes,
                "seconds": seconds,
                "max rel diff vs newton": diff,
                "LL gap": newton.llf - res.llf,
                "NIST digits": "" if certified is None else round(nist_digits(b, certified), 1),
                "warnings": "; ".join(str(w.message)[:60] for w in caught),
            }
        )
        print(rows[-1], flush=True)
    return rows


def run_panels(sizes: dict[str, int], family: str) -> list[dict]:
    exposure = family == "poisson"
    ds = simulate_panel(sizes, family, seed=3, exposure=exposure, chunks={"i": 25})
    ds = dask.persist(ds)[0]
    x = [v for v in ds.data_vars if v.startswith("x_")]
    fam = dg.NegativeBinomial(alpha=None) if family == "negative_binomial" else family
    kw = {"exposure": "exposure"} if exposure else {}
    return fit_all(f"{family} {'x'.join(map(str, sizes.values()))}", ds, x, fam, **kw)


def to_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                v = f"{v:.1e}" if c.startswith("max") or c == "LL gap" else f"{v:.3g}"
            cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,100,50", help="i,j,k lengths of the simulated panels")
    ap.add_argument("--skip-panels", action="store_true", help="only the real data sets")
    ap.add_argument("--nist", default=str(NIST_DIR), help="directory of the NIST StRD files")
    ap.add_argument("--out", default=None, help="write the markdown tables here")
    args = ap.parse_args()
    real = []
    for name, (ds, x, fam, kw, certified) in real_data(Path(args.nist)).items():
        real += fit_all(name, ds, x, fam, certified, **kw)
    text = f"## Real data sets\n\n{to_markdown(real)}\n"
    if not args.skip_panels:
        i, j, k = (int(v) for v in args.sizes.split(","))
        sizes = {"i": i, "j": j, "k": k}
        panels = run_panels(sizes, "poisson") + run_panels(sizes, "negative_binomial")
        text += f"\n## Simulated {i}x{j}x{k} panels\n\n{to_markdown(panels)}\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Solvers (`python benchmarks/solvers.py`)\n\n{text}")


if __name__ == "__main__":
    main()
