"""ns/cell of the setup pass, an evaluation pass and the final pass on one chunk of a real store.

``python benchmarks/setup_pass.py [--store /tmp/billion/panel.zarr] [--repeat 3]``

Loads the first chunk of every input of the 1e9-cell Poisson panel of ``benchmarks/billion.py``
(``y``, ``exposure`` on (i, j), four full-grid covariates, two covariates on each of (i, j),
(i, k), (j, k), i, j, k; 50 x 100 x 1000 = 5e6 cells, float32) into memory (when ``--store``
does not exist, a one-chunk panel of that layout, 50 x 100 x 1000, is written there first
with ``billion.write_store``: ``daskglm simulate``) and times, single
threaded and as in a dask worker (one BLAS thread, ``MALLOC_TRIM_THRESHOLD_=65536`` as dask's
nannies set it, then glibc's thresholds raised as :class:`daskglm.runtime.workers.WorkerMalloc` does:
temporaries over 32 MiB are fresh ``mmap`` s whose pages fault in), the CPU time of this thread
(best of ``--repeat``), the wall time of that call and its minor page faults:

* ``kernels.setup_chunk`` with each engine (``"numpy"``: counts, sums and constants slab by
  slab in numpy, the Gram through the numpy accumulator; ``"numba"``: one compiled sweep);
* the numba setup's parts: the compiled sweep (``kernels_numba.setup_chunk``: counts, sums, the
  family's terms and the Gram) and the input checks on the client side of it
  (``kernels._suspect_inputs``: the small inputs' own arrays);
* for comparison, the numpy engine's slab-by-slab counts, sums and constants
  (``kernels._setup_sums``);
* the compiled evaluation pass with the Hessian (``kernels_numba.eval_chunk``, ``final=False``)
  and the final pass (``final=True``) with the HC0 meat (robust standard errors) and without it
  (``meat=False``: what ``PanelObjective.final`` asks for with nonrobust errors), and without
  the Hessian; the numpy evaluation pass for scale.

``ratio`` is each row's CPU time over the compiled evaluation pass's (the target of issue 12:
the setup and the final pass within ~1.2x of an evaluation).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings

#: a dask worker's environment (``distributed.nanny.pre-spawn-environ``), set before the process starts
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": "65536"}
if any(os.environ.get(k) != v for k, v in WORKER_ENV.items()):
    os.environ.update(WORKER_ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from daskglm.api.registry import resolve_family  # noqa: E402
from daskglm.frontend.panel import build_panel  # noqa: E402
from daskglm.kernels import chunk as kernels  # noqa: E402
from daskglm.kernels import chunk_numba as kernels_numba  # noqa: E402
from daskglm.runtime.workers import set_malloc_thresholds  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from billion import write_store  # noqa: E402

warnings.simplefilter("ignore")


def best_ns_per_cell(func, args: tuple, cells: int, repeat: int) -> tuple[float, float, int]:
    """The call of ``func(*args)`` with the least CPU time over ``repeat`` calls (after one
    warm-up): its CPU and wall ns/cell and its minor page faults."""
    func(*args)
    best = (np.inf, np.inf, 0)
    for _ in range(repeat):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, w0 = time.thread_time(), time.perf_counter()
        func(*args)
        cpu, wall = time.thread_time() - t0, time.perf_counter() - w0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        best = min(best, (cpu * 1e9 / cells, wall * 1e9 / cells, faults))
    return best


def final_without_meat(layout, params, *chunk):
    """The compiled final pass (deviance, separated cells, Hessian) without the meat."""
    return kernels_numba.eval_chunk(layout, params, True, True, *chunk, meat=False)


def suspect_inputs(layout, *chunk):
    """The numba setup's input checks when the sweep found every full-grid covariate finite."""
    swept = {src: 0 for src, _, _ in kernels_numba._plan_for(layout).sources}
    return kernels._suspect_inputs(layout, chunk, swept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/billion/panel.zarr")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    set_malloc_thresholds(64 * 2**20)  # a 4 GB worker's (WorkerMalloc: min(64 MiB, limit / 16))
    if not Path(args.store).exists():
        write_store(Path(args.store), "i=50,j=100,k=1000", "i=50,j=100", None)
    ds = xr.open_zarr(args.store)
    x = [v for v in ds.data_vars if v.startswith("x")]
    panel = build_panel(ds, "y", x, resolve_family("poisson"), exposure="exposure")
    layout = panel.layout
    chunk = tuple(np.asarray(a.blocks[(0,) * a.ndim].compute()) for a in panel.arrays)
    cells = chunk[layout.role("y")[0]].size
    params = np.zeros(layout.n_params)
    params[0] = 0.5
    shape = chunk[layout.role("y")[0]].shape
    rows = {
        "setup_chunk, engine=numpy": (lambda *a: kernels.setup_chunk(*a, engine="numpy"), (layout, *chunk)),
        "setup_chunk, engine=numba": (lambda *a: kernels.setup_chunk(*a, engine="numba"), (layout, *chunk)),
        "  compiled sweep": (kernels_numba.setup_chunk, (layout, *chunk)),
        "  input checks": (suspect_inputs, (layout, *chunk)),
        "numpy counts, sums, constants": (kernels._setup_sums, (layout, chunk, shape)),
        "eval numba (hessian)": (kernels_numba.eval_chunk, (layout, params, True, False, *chunk)),
        "eval numba (no hessian)": (kernels_numba.eval_chunk, (layout, params, False, False, *chunk)),
        "final numba (hessian, final)": (kernels_numba.eval_chunk, (layout, params, True, True, *chunk)),
        "  final without the meat": (final_without_meat, (layout, params, *chunk)),
        "  final without the hessian": (kernels_numba.eval_chunk, (layout, params, False, True, *chunk)),
        "eval numpy (hessian)": (kernels.eval_chunk, (layout, params, True, False, *chunk)),
    }
    print(f"one chunk of {args.store}: {cells} cells, {layout.n_params} parameters, best of {args.repeat}")
    print(f"{'':32s} {'cpu ns/cell':>11s} {'wall ns/cell':>12s} {'page faults':>11s} {'ratio':>6s}")
    evaluation = best_ns_per_cell(*rows["eval numba (hessian)"], cells, args.repeat)[0]
    for name, (func, fargs) in rows.items():
        cpu, wall, faults = best_ns_per_cell(func, fargs, cells, args.repeat)
        print(f"{name:32s} {cpu:11.1f} {wall:12.1f} {faults:11d} {cpu / evaluation:6.2f}", flush=True)


if __name__ == "__main__":
    main()
