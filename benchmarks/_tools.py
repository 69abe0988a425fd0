"""One benchmark fit, in a process of its own: ``python benchmarks/_tools.py SPEC.json``.

``benchmarks/peers.py`` writes the spec (tool, family, where the data are) and watches this
process's memory (and its children's, for daskglm's workers) from outside. This script loads
the data the way the tool needs them, fits, and writes ``spec["out"]`` as JSON: parameters by
name (daskglm's names), iterations, and the seconds of the fit alone (data loading and imports
excluded for every tool). For daskglm it also measures the floor: one plain dask pass over the
same full-grid arrays, on the same scheduler, from the same place (memory or the store), and
records the seconds of every pass (``pass_log``); with ``spec["warm"]`` the threaded fit is
timed a second time in the same process (``warm_seconds``: the first call's one-off costs,
such as loading the compiled kernels from numba's cache, gone).

Tools: ``daskglm`` (threaded scheduler in this process, the default of ``dg.fit``, data in
memory as dask arrays), ``daskglm-cluster`` (a LocalCluster of worker processes reading the zarr
store; persisted there when it fits), ``statsmodels``, ``glum``, ``dask-glm`` (newton),
``pyfixest`` (fepois / feglm without fixed effects).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np

warnings.simplefilter("ignore")


# --------------------------------------------------------------------------- daskglm
def _daskglm_family(spec: dict):
    import daskglm as dg

    if spec["family"] == "negative_binomial":
        return dg.NegativeBinomial(alpha=None)
    if spec["family"] == "binomial":
        return dg.Binomial(trials="trials")
    return spec["family"]


def _floor(arrays, repeat: int = 2) -> float:
    """Seconds of one dask pass that reads every full-grid array once (best of ``repeat``)."""
    import dask

    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        dask.compute(*[a.astype("float64").sum() for a in arrays])
        best = min(best, time.perf_counter() - t0)
    return best


def _per_iteration(res) -> float:
    secs = np.diff(res.history["seconds"].to_numpy())
    return float(np.median(secs)) if secs.size else float("nan")


def _pass_log(res) -> list:
    """``[what, seconds]`` of every pass of the fit (setup, eval, final), as the fit counted them."""
    counter = getattr(res, "_counter", None)
    return [[what, float(sec)] for what, sec in getattr(counter, "log", [])]


def _daskglm_result(res, fit_seconds: float, floor: float, extra: dict) -> dict:
    out = {
        "params": {k: float(v) for k, v in res.params.items()},
        "iterations": int(res.n_iter),
        "fit_seconds": fit_seconds,
        "per_iteration": _per_iteration(res),
        "floor": floor,
        "passes": int(res.passes),
        "converged": bool(res.converged),
        "pass_log": _pass_log(res),
        **extra,
    }
    if res.alpha is not None:
        out["params"]["alpha"] = float(res.alpha)
    return out


def run_daskglm(spec: dict) -> dict:
    import dask
    import xarray as xr

    from daskglm import fit  # an import, as for every tool (``import daskglm`` alone loads nothing)

    family = _daskglm_family(spec)
    ds = xr.open_zarr(spec["store"])
    ds = dask.persist(ds, scheduler="threads")[0]  # in memory, chunked as stored
    full = [ds[v].data for v in ds.data_vars if ds[v].ndim == ds["y"].ndim]
    t0 = time.perf_counter()
    res = fit(ds, "y", spec["x"], family, progress=False)
    seconds = time.perf_counter() - t0
    extra = {"setting": "threads, in memory"}
    if spec.get("warm"):  # the same fit again in this process: the first call's one-off costs gone
        t0 = time.perf_counter()
        again = fit(ds, "y", spec["x"], _daskglm_family(spec), progress=False)
        extra["warm_seconds"] = time.perf_counter() - t0
        extra["warm_pass_log"] = _pass_log(again)
    return _daskglm_result(res, seconds, _floor(full), extra)


def run_daskglm_cluster(spec: dict) -> dict:
    import xarray as xr
    from distributed import Client, LocalCluster, wait

    from daskglm import fit
    from daskglm.runtime.scheduling import cluster_chunks

    n_workers = spec.get("n_workers", 2)
    limit = spec.get("memory_limit", "auto")
    with (
        LocalCluster(
            n_workers=n_workers, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(lambda: __import__("os").getpid())
        family = _daskglm_family(spec)
        t0 = time.perf_counter()
        res = fit(spec["store"], "y", spec["x"], family, client=client, progress=False)
        seconds = time.perf_counter() - t0
        ds = xr.open_zarr(spec["store"])
        full = [ds[v].data for v in ds.data_vars if ds[v].ndim == ds["y"].ndim]
        if res.persisted:  # in worker memory, in the chunks the fit persisted (one task per thread)
            chunks = cluster_chunks(full[0].chunks, sum(client.nthreads().values()))
            full = client.persist([a.rechunk(chunks) for a in full])
            wait(full)
        floor = _floor(full)
        restarted = client.run(lambda: __import__("os").getpid()) != pids
    where = "persisted" if res.persisted else "streamed"
    setting = f"LocalCluster {n_workers}x1 thread, {limit} each, {where}"
    return _daskglm_result(res, seconds, floor, {"setting": setting, "workers_restarted": restarted})


# --------------------------------------------------------------------------- peers
def _load_long(spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    X = np.load(spec["X"])
    y = np.load(spec["y"])
    trials = np.load(spec["trials"]) if spec.get("trials") else None
    return X, y, trials


def _named(spec: dict, intercept: float, coefs) -> dict:
    out = {"Intercept": float(intercept)}
    out.update({name: float(c) for name, c in zip(spec["x"], coefs, strict=True)})
    return out


def run_statsmodels(spec: dict) -> dict:
    import statsmodels.api as sm

    X, y, trials = _load_long(spec)
    X = np.column_stack([np.ones(len(y)), X])
    fam = spec["family"]
    t0 = time.perf_counter()
    if fam == "negative_binomial":
        res = sm.NegativeBinomial(y, X, loglike_method="nb2").fit(method="newton", maxiter=100, disp=0)
        iters = int(res.mle_retvals["iterations"])
        params = _named(spec, res.params[0], res.params[1:-1])
        params["alpha"] = float(res.params[-1])
    else:
        if fam == "binomial":
            model = sm.GLM(np.column_stack([y, trials - y]), X, family=sm.families.Binomial())
        else:
            model = sm.GLM(y, X, family=sm.families.Poisson())
        res = model.fit()
        iters = int(res.fit_history["iteration"])
        params = _named(spec, res.params[0], res.params[1:])
    return {"params": params, "iterations": iters, "fit_seconds": time.perf_counter() - t0}


def run_glum(spec: dict) -> dict:
    from glum import GeneralizedLinearRegressor, NegativeBinomialDistribution

    X, y, trials = _load_long(spec)
    fam = spec["family"]
    weights = None
    if fam == "negative_binomial":  # glum has no NB2 dispersion estimate: alpha fixed at daskglm's
        family = NegativeBinomialDistribution(theta=spec["alpha"])
    elif fam == "binomial":
        family, weights, y = "binomial", trials, y / trials
    else:
        family = fam
    model = GeneralizedLinearRegressor(family=family, alpha=0, fit_intercept=True)
    t0 = time.perf_counter()
    model.fit(X, y, sample_weight=weights)
    seconds = time.perf_counter() - t0
    return {
        "params": _named(spec, model.intercept_, model.coef_),
        "iterations": int(model.n_iter_),
        "fit_seconds": seconds,
    }


def run_dask_glm(spec: dict) -> dict:
    import dask
    import dask.array as da
    from dask_glm.algorithms import newton
    from dask_glm.families import Poisson

    X, y, _ = _load_long(spec)
    X = np.column_stack([np.ones(len(y)), X])
    rows = max(1, 2**22 // X.shape[1])  # about 32 MB per chunk
    Xd, yd = da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(y, chunks=rows)
    Xd, yd = dask.persist(Xd, yd)
    t0 = time.perf_counter()
    beta = newton(Xd, yd, family=Poisson, max_iter=50, tol=1e-8)
    seconds = time.perf_counter() - t0
    return {"params": _named(spec, beta[0], beta[1:]), "iterations": None, "fit_seconds": seconds}


def run_pyfixest(spec: dict) -> dict:
    import pandas as pd
    import pyfixest as pf

    X, y, _ = _load_long(spec)
    df = pd.DataFrame(X, columns=spec["x"], copy=False)
    df["y"] = y
    del X
    fml = "y ~ " + " + ".join(spec["x"])
    t0 = time.perf_counter()
    fit = pf.fepois(fml, data=df, copy_data=False, store_data=False, lean=True)
    seconds = time.perf_counter() - t0
    coef = fit.coef()
    params = {"Intercept": float(coef["Intercept"])}
    params.update({name: float(coef[name]) for name in spec["x"]})
    iters = getattr(fit, "_iter", None) or getattr(fit, "_n_iter", None)
    return {"params": params, "iterations": iters, "fit_seconds": seconds}


TOOLS = {
    "daskglm": run_daskglm,
    "daskglm-cluster": run_daskglm_cluster,
    "statsmodels": run_statsmodels,
    "glum": run_glum,
    "dask-glm": run_dask_glm,
    "pyfixest": run_pyfixest,
}


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result = TOOLS[spec["tool"]](spec)
    with open(spec["out"], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
