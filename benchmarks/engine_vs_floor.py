"""Per-iteration time of a Newton fit beside the floor: one plain dask pass over the same arrays.

    python benchmarks/engine_vs_floor.py [--sizes 200,200,50] [--repeat 3] [--out FILE.json]

The panel: 3-D Poisson, 28 coefficients in 7 dim-blocks (full grid, (i,j), (i,k), (j,k), i, j,
k). Two settings: the full-grid arrays persisted in memory (threaded scheduler), and streamed
from a float32 zarr store on disk. The floor is one ``dask.compute`` of the sum of every full-grid
array (y and the four full-grid covariates), i.e. reading each byte once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from _tools import _floor as plain_pass_seconds  # benchmarks/ is the script's folder

import daskglm as dg
from daskglm.simulate import simulate_panel

warnings.simplefilter("ignore")


def floor_seconds(ds: xr.Dataset, repeat: int) -> float:
    """One plain dask pass over every full-grid array (best of ``repeat``): see ``_tools``."""
    return plain_pass_seconds([ds[v].data for v in ds.data_vars if ds[v].ndim == 3], repeat)


def fit_seconds_per_iteration(data, x, repeat: int) -> tuple[float, int]:
    best = np.inf
    for _ in range(repeat):
        res = dg.fit(data, "y", x, "poisson")
        secs = np.diff(res.history["seconds"].to_numpy())  # one pass per accepted iteration
        best = min(best, float(np.median(secs)))
    return best, res.n_iter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="200,200,50")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).with_name("engine_vs_floor.json")), help="JSON record")
    a = p.parse_args()
    i, j, k = (int(s) for s in a.sizes.split(","))
    ds = simulate_panel({"i": i, "j": j, "k": k}, "poisson", seed=1, chunks={"i": 100, "j": 100})
    x = [v for v in ds.data_vars if v.startswith("x_")]
    cells = i * j * k
    print(f"panel {i}x{j}x{k} = {cells:.3g} cells, {len(x) + 1} coefficients, chunks {ds.y.data.chunksize}")
    mem = ds.persist()
    fl = floor_seconds(mem, a.repeat)
    it, n = fit_seconds_per_iteration(mem, x, a.repeat)
    print(f"in memory : iteration {it:.3f}s  floor {fl:.3f}s  ratio {it / fl:.1f}x  ({n} iterations)")
    record = {"panel": [i, j, k], "coefficients": len(x) + 1, "chunks": list(ds.y.data.chunksize)}
    record["in_memory"] = {"iteration_s": it, "floor_s": fl, "ratio": it / fl, "iterations": n}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/p.zarr"
        ds.astype("float32").to_zarr(path, mode="w")
        disk = xr.open_zarr(path)
        fl = floor_seconds(disk, a.repeat)
        it, n = fit_seconds_per_iteration(path, x, a.repeat)
        print(f"from zarr : iteration {it:.3f}s  floor {fl:.3f}s  ratio {it / fl:.1f}x  ({n} iterations)")
        record["from_zarr_float32"] = {"iteration_s": it, "floor_s": fl, "ratio": it / fl, "iterations": n}
    if a.out:
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
