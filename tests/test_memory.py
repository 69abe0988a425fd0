"""A fit whose expanded design would be >= 2 GB runs with a peak memory well below that.

The panel (240 x 200 x 200 = 9.6e6 cells, 28 coefficients in 7 dim-blocks: expanded design
9.6e6 x 29 x 8 bytes = 2.2 GB) is written to a float32 zarr store on disk chunk by chunk; a fresh
subprocess fits it from the store and reports its peak resident memory (``ru_maxrss``, the
high-water mark of the whole process, Python, numpy, dask and the data included), first after its
imports and a small fit of the same layout (which compiles the kernels), then after the big fit.
The difference is what the data cost; the fixed part (~0.35 GB here, imports and compiled code) was
0.84 GB in all on one CI run that this machine could not reproduce, hence two bounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from daskglm.api.simulate import simulate_panel

SIZES = {"i": 240, "j": 200, "k": 200}
DESIGN_BYTES = int(np.prod(list(SIZES.values()))) * 29 * 8

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time, warnings
    warnings.simplefilter("ignore")
    import dask
    import daskglm as dg
    dask.config.set(num_workers=2)
    path, small = sys.argv[1], sys.argv[2]
    x = [f"x_{b}_{c}" for b in ("ijk", "ij", "ik", "jk", "i", "j", "k") for c in range(1, 5)]
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    imported = rss()
    dg.fit(small, "y", x, "poisson", exposure="exposure")  # the same layout on 1/400 of the cells
    warm = rss()
    t0 = time.perf_counter()
    res = dg.fit(path, "y", x, "poisson", exposure="exposure")
    peak = rss()
    print(json.dumps({"peak": peak, "imported": imported, "warm": warm,
                      "seconds": time.perf_counter() - t0, "passes": res.passes,
                      "params": res.params.to_dict(), "converged": res.converged}))
    """
)


@pytest.mark.slow
def test_peak_memory_far_below_the_expanded_design(tmp_path):
    assert DESIGN_BYTES >= 2e9
    path = tmp_path / "big.zarr"
    ds = simulate_panel(
        SIZES, "poisson", exposure=True, seed=3, dtype=np.float32, chunks={"i": 30, "j": 50, "k": 200}
    )
    ds.to_zarr(path, mode="w")
    small = tmp_path / "small.zarr"
    simulate_panel({"i": 12, "j": 10, "k": 200}, "poisson", exposure=True, seed=4, dtype=np.float32).to_zarr(
        small, mode="w"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(small)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    growth = report["peak"] - report["warm"]
    figures = (
        f"peak RSS {report['peak'] / 1e9:.2f} GB (after imports {report['imported'] / 1e9:.2f} GB, after "
        f"a small fit of the same layout {report['warm'] / 1e9:.2f} GB, so the 9.6e6-cell fit added "
        f"{growth / 1e9:.2f} GB) vs expanded design {DESIGN_BYTES / 1e9:.2f} GB; "
        f"fit {report['seconds']:.1f}s in {report['passes']} passes"
    )
    print("\n" + figures)
    assert report["converged"]
    # What the data cost: the growth over a process that has imported everything and compiled the
    # kernels (whose ~0.35-0.5 GB do not grow with the panel) stays under a tenth of the design.
    assert growth < DESIGN_BYTES / 10, figures
    assert report["peak"] < DESIGN_BYTES / 2, figures
    truth = json.loads(ds.attrs["true_params"])
    worst = max(abs(report["params"][k] - v) for k, v in truth.items())
    assert worst < 0.01  # 9.6e6 cells: estimates within 1e-2 of the truth
