"""ns/cell of the setup pass, an evaluation pass and the final pass on one chunk of a real store.

``python benchmarks/setup_pass.py [--store /tmp/billion/panel.zarr] [--repeat 3]``

Loads the first chunk of every input of the 1e9-cell Poisson panel of ``benchmarks/billion.py``
(``y``, ``exposure`` on (i, j), four full-grid covariates, two covariates on each of (i, j),
(i, k), (j, k), i, j, k; 50 x 100 x 1000 = 5e6 cells, float32) into memory and times, single
threaded (CPU time of this thread, best of ``--repeat``):

* ``kernels.setup_chunk`` with each engine (``"numpy"``: the Gram through the numpy
  accumulator; ``"numba"``: through the compiled sweep);
* the compiled evaluation pass with the Hessian (``kernels_numba.eval_chunk``, ``final=False``)
  and the final pass (``final=True``), and the numpy evaluation pass for scale.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import xarray as xr

from daskglm import kernels, kernels_numba
from daskglm.panel import build_panel
from daskglm.registry import resolve_family

warnings.simplefilter("ignore")


def best_ns_per_cell(func, args: tuple, cells: int, repeat: int) -> float:
    """Best CPU time of ``func(*args)`` over ``repeat`` calls (after one warm-up), in ns/cell."""
    func(*args)
    best = np.inf
    for _ in range(repeat):
        t0 = time.thread_time()
        func(*args)
        best = min(best, time.thread_time() - t0)
    return best * 1e9 / cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/billion/panel.zarr")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ds = xr.open_zarr(args.store)
    x = [v for v in ds.data_vars if v.startswith("x")]
    panel = build_panel(ds, "y", x, resolve_family("poisson"), exposure="exposure")
    layout = panel.layout
    chunk = tuple(np.asarray(a.blocks[(0,) * a.ndim].compute()) for a in panel.arrays)
    cells = chunk[layout.role("y")[0]].size
    params = np.zeros(layout.n_params)
    params[0] = 0.5
    rows = {
        "setup_chunk, engine=numpy": (lambda *a: kernels.setup_chunk(*a, engine="numpy"), (layout, *chunk)),
        "setup_chunk, engine=numba": (lambda *a: kernels.setup_chunk(*a, engine="numba"), (layout, *chunk)),
        "eval numba (hessian)": (kernels_numba.eval_chunk, (layout, params, True, False, *chunk)),
        "final numba (hessian, final)": (kernels_numba.eval_chunk, (layout, params, True, True, *chunk)),
        "eval numpy (hessian)": (kernels.eval_chunk, (layout, params, True, False, *chunk)),
    }
    print(f"one chunk of {args.store}: {cells} cells, {layout.n_params} parameters, best of {args.repeat}")
    for name, (func, fargs) in rows.items():
        print(f"{name:32s} {best_ns_per_cell(func, fargs, cells, args.repeat):7.1f} ns/cell", flush=True)


if __name__ == "__main__":
    main()
