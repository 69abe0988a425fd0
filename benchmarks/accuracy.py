"""Achieved accuracy against the references the tests use, as figures rather than pass/fail.

    python benchmarks/accuracy.py

* published R/Stata results on statsmodels' shipped datasets (the numbers embedded in
  ``tests/test_published.py``, with their sources there);
* statsmodels on the expanded design, for every family on 1-D to 4-D simulated panels with
  chunks that cut every dim;
* statsmodels on real data at raw scales (dollars, head counts, calendar years; the cases of
  ``tests/test_raw_scale.py``), for every family, by both Newton routes;
* NIST StRD certified linear regressions (``tests/test_nist.py``; needs the shared reference
  folder): correct digits (log relative error) of estimates, standard errors and residual SD.

Prints the largest relative difference of params, standard errors and log-likelihood, and the
NIST digits.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import warnings
from pathlib import Path

import numpy as np
import statsmodels.api as sm

import daskglm as dg
from daskglm.api.simulate import simulate_panel

warnings.simplefilter("ignore")
ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "tests"))
    spec.loader.exec_module(mod)
    return mod


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def published() -> None:
    pub = _load("test_published")
    print("published references (max relative difference)")
    for name, ref in (("star98", pub.STAR98), ("cpunish", pub.CPUNISH), ("randhie", pub.RANDHIE_NB2)):
        res, order = pub.__dict__[name].__wrapped__()
        row = {"params": rel(res.params[order], ref["params"]), "llf": rel(res.llf, ref["llf"])}
        if "bse" in ref:
            row["bse"] = rel(res.bse[order], ref["bse"])
        else:  # Stata's symmetric Wald intervals
            ci = np.asarray(ref["conf_int"])
            row["bse (from Stata CI)"] = rel(res.bse[order], (ci[:, 1] - ci[:, 0]) / (2 * pub.Z975))
            row["alpha"] = rel(res.alpha, ref["alpha"])
        print(f"  {name:8s} " + "  ".join(f"{k} {v:.1e}" for k, v in row.items()))


def _expanded(ds, x):
    """The long-format design, one row per cell, as statsmodels sees it."""
    df = ds.to_dataframe().reset_index()
    return df, sm.add_constant(df[x], prepend=True)


def versus_statsmodels() -> None:
    print("statsmodels on the expanded design (max relative difference: params / bse / llf)")
    fams = {
        "gaussian": sm.families.Gaussian(),
        "poisson": sm.families.Poisson(),
        "binomial": sm.families.Binomial(),
        "negative_binomial": None,
    }
    shapes = {
        1: {"obs": 4000},
        2: {"i": 60, "j": 50},
        3: {"i": 20, "j": 15, "k": 12},
        4: {"i": 9, "j": 8, "k": 7, "l": 6},
    }
    for (fam, smfam), (nd, sizes) in itertools.product(fams.items(), shapes.items()):
        chunks = {d: max(n // 3, 1) + 1 for d, n in sizes.items()}
        ds = simulate_panel(sizes, fam, chunks=chunks, seed=nd).compute()
        x = [v for v in ds.data_vars if v.startswith("x_")]
        df, X = _expanded(ds, x)
        if fam == "binomial":
            res = dg.fit(ds, "y", x, dg.Binomial(trials="trials"))
            endog = np.column_stack([df["y"], df["trials"] - df["y"]])
            ref = sm.GLM(endog, X, family=smfam).fit(tol=1e-12)
        elif fam == "negative_binomial":
            res = dg.fit(ds, "y", x, dg.NegativeBinomial())
            nb2 = sm.NegativeBinomial(df["y"], X, loglike_method="nb2")
            ref = nb2.fit(disp=0, maxiter=200, method="newton")
        else:
            res = dg.fit(ds, "y", x, fam)
            ref = sm.GLM(df["y"], X, family=smfam).fit(tol=1e-12)
        names = ["Intercept"] + x
        p = res.params[names].to_numpy()
        rp = np.asarray(ref.params)[: len(names)]
        rb = np.asarray(ref.bse)[: len(names)]
        diffs = (rel(p, rp), rel(res.bse[names], rb), rel(res.llf, ref.llf))
        print(f"  {fam:18s} {nd}-D  " + " / ".join(f"{v:.1e}" for v in diffs))


def raw_scale() -> None:
    raw = _load("test_raw_scale")
    print("real data at raw scales vs statsmodels (max relative difference: params / bse)")
    for family in sorted(raw.CASES):
        data, y, x, fam, _, _ = raw.CASES[family]
        ds = data()
        if family == "binomial":
            ds = ds.assign(n=ds["pop"])
        params, bse = raw.reference(family)
        for qr in ("never", "always"):
            res = dg.fit(ds, y, x, fam, progress=False, qr=qr)
            nb = len(x) + 1
            diffs = (rel(res.params.to_numpy(), params[:nb]), rel(res.bse.to_numpy(), bse[:nb]))
            print(f"  {family:18s} qr={qr:6s} " + " / ".join(f"{v:.1e}" for v in diffs))


def nist() -> None:
    mod = _load("test_nist")
    if not mod.NIST.is_dir():
        print(f"NIST StRD: reference folder {mod.NIST} not found, skipped")
        return
    print("NIST StRD certified values (correct digits, min over coefficients: estimates / SEs / residual SD)")
    for name, need in mod.REQUIRED.items():
        d = mod.nist_digits(name)
        print(
            f"  {name:9s} {d['estimates']:5.1f} / {d['std_errors']:5.1f} / {d['residual_sd']:5.1f}"
            f"   (required {need})"
        )


if __name__ == "__main__":
    published()
    versus_statsmodels()
    raw_scale()
    nist()
