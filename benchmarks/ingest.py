"""Ingest of a long parquet table into a zarr panel, beside pandas reading the same file.

    python benchmarks/ingest.py [--rows 2e7] [--workdir DIR] [--out benchmarks/ingest.json]

Writes a trade-like long table (exporter x importer x year x product, shuffled rows, about half
of the cells present) to one parquet file in row groups of 2**20 rows:

| column   | lives on                          | type    |
|----------|-----------------------------------|---------|
| flow     | (exporter, importer, year, product) | float64 |
| quantity | (exporter, importer, year, product) | int64   |
| tariff   | (importer, year, product)         | float64 |
| rta      | (exporter, importer, year)        | bool    |
| dist     | (exporter, importer)              | float64 |
| gdp_o    | (exporter, year)                  | float64 |
| gdp_d    | (importer, year)                  | float64 |

Keys: exporter, importer and product are strings, year an integer. Then, each in a fresh
process of its own, measures the seconds and peak resident memory (``VmHWM``, the process's
own high-water mark: Python, the libraries and the data; ``ru_maxrss`` could carry this parent's
over fork+exec) of

* ``pandas``: ``pd.read_parquet(file)``, the memory needed just to hold the table;
* ``daskglm``: ``dg.from_long(file, dims=[...], to="panel.zarr")``, the streaming ingest;
* ``baseline``: importing daskglm, pandas and pyarrow and nothing else.

and checks the store against the generated truth (every column in every cell). Writes the
figures as JSON (``--out``) and prints a markdown table (copied into ``benchmarks/INGEST.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

SIZES = {"exporter": 200, "importer": 200, "year": 25, "product": 40}
DIMS = list(SIZES)

RUNNERS = {
    "baseline": """
        import daskglm, pandas, pyarrow, pyarrow.parquet
        out = {}
    """,
    "pandas": """
        import pandas as pd
        df = pd.read_parquet(PATH)
        out = {"rows": len(df), "frame_bytes": int(df.memory_usage(deep=True).sum())}
    """,
    "daskglm": """
        import daskglm as dg
        ds = dg.from_long(PATH, dims=DIMS, to=STORE, overwrite=True, progress=False)
        placed = {v: ds[v].attrs["long_table_dims"] for v in ds.data_vars}
        out = {"report": ds.attrs["from_long"], "placed": placed}
    """,
}


def measure(name: str, path: str, store: str) -> dict:
    body = textwrap.dedent(RUNNERS[name])
    script = (
        "import json, resource, time, warnings\nwarnings.simplefilter('ignore')\n"
        f"PATH, STORE, DIMS = {path!r}, {store!r}, {DIMS!r}\nt0 = time.perf_counter()\n"
        + body
        + "out['seconds'] = time.perf_counter() - t0\n"
        "hwm = [int(x.split()[1]) * 1024 for x in open('/proc/self/status') if x.startswith('VmHWM:')]\n"
        "out['peak_bytes'] = hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600)
    if run.returncode:
        raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def make_table(n_rows: int, seed: int = 0):
    """The long table as a pyarrow Table plus the truth arrays on each column's own dims."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    shape = tuple(SIZES.values())
    grid = int(np.prod(shape))
    cells = rng.choice(grid, size=n_rows, replace=False)  # shuffled rows, ~half the cells
    e, i, t, p = np.unravel_index(cells, shape)
    truth = {
        "tariff": rng.uniform(0, 0.3, size=(SIZES["importer"], SIZES["year"], SIZES["product"])),
        "rta": rng.random((SIZES["exporter"], SIZES["importer"], SIZES["year"])) < 0.3,
        "dist": np.log(rng.uniform(100, 20000, size=(SIZES["exporter"], SIZES["importer"]))),
        "gdp_o": rng.normal(25, 2, size=(SIZES["exporter"], SIZES["year"])),
        "gdp_d": rng.normal(25, 2, size=(SIZES["importer"], SIZES["year"])),
    }
    flow = rng.lognormal(2, 1.5, size=n_rows)
    quantity = rng.poisson(50, size=n_rows)
    labels = {
        "exporter": np.array([f"E{k:03d}" for k in range(SIZES["exporter"])]),
        "importer": np.array([f"I{k:03d}" for k in range(SIZES["importer"])]),
        "product": np.array([f"HS{k:04d}" for k in range(SIZES["product"])]),
    }
    table = pa.table(
        {
            "exporter": pa.array(labels["exporter"][e]),
            "importer": pa.array(labels["importer"][i]),
            "year": pa.array(1995 + t, type=pa.int64()),
            "product": pa.array(labels["product"][p]),
            "flow": flow,
            "quantity": quantity,
            "tariff": truth["tariff"][i, t, p],
            "rta": truth["rta"][e, i, t],
            "dist": truth["dist"][e, i],
            "gdp_o": truth["gdp_o"][e, t],
            "gdp_d": truth["gdp_d"][i, t],
        }
    )
    return table, cells, truth, flow, quantity


def check_store(store: str, cells, truth, flow, quantity) -> float:
    """Largest |store - truth| over every column (labels sort like the generating codes)."""
    import xarray as xr

    ds = xr.open_zarr(store)
    worst = 0.0
    for name, full in (("flow", flow), ("quantity", quantity)):
        arr = ds[name].values.reshape(-1)
        worst = max(worst, float(np.abs(arr[cells] - full).max()))
        mask = np.ones(arr.size, bool)
        mask[cells] = False
        assert np.isnan(arr[mask]).all(), f"{name}: a cell without a row is not NaN"
    for name, arr in truth.items():
        got = ds[name].values
        seen = ~np.isnan(got)
        worst = max(worst, float(np.abs(got[seen] - arr.astype(float)[seen]).max()))
        assert seen.mean() > 0.5, name
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=2e7)
    ap.add_argument("--workdir", default=None, help="folder for the parquet file and store")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "ingest.json"))
    args = ap.parse_args(argv)
    import pyarrow.parquet as pq

    n_rows = int(args.rows)
    with tempfile.TemporaryDirectory(prefix="daskglm-ingest-bench-", dir=args.workdir) as tmp:
        path, store = os.path.join(tmp, "trade.parquet"), os.path.join(tmp, "panel.zarr")
        t0 = time.perf_counter()
        table, cells, truth, flow, quantity = make_table(n_rows)
        pq.write_table(table, path, row_group_size=1 << 20)
        del table
        file_bytes = os.path.getsize(path)
        secs = time.perf_counter() - t0
        print(f"wrote {n_rows:,} rows to {path} ({file_bytes / 1e6:.0f} MB) in {secs:.0f}s")
        results = {name: measure(name, path, store) for name in ("baseline", "pandas", "daskglm")}
        worst = check_store(store, cells, truth, flow, quantity)
        store_bytes = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(store) for f in files
        )
    pandas, ours, base = results["pandas"], results["daskglm"], results["baseline"]
    record = {
        "rows": n_rows,
        "sizes": SIZES,
        "parquet_bytes": file_bytes,
        "store_bytes": store_bytes,
        "max_abs_error": worst,
        "machine": f"{os.cpu_count()} cores",
        **results,
        "memory_ratio": ours["peak_bytes"] / pandas["peak_bytes"],
        "time_ratio": ours["seconds"] / pandas["seconds"],
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    gb = 1e9
    print(f"\n{ours['report']}\n")
    print("| what | seconds | peak RSS |")
    print("|---|---|---|")
    print(f"| imports only (baseline) | {base['seconds']:.1f} | {base['peak_bytes'] / gb:.2f} GB |")
    print(
        f"| pandas `read_parquet` (holds the table: {pandas['frame_bytes'] / gb:.2f} GB) | "
        f"{pandas['seconds']:.1f} | {pandas['peak_bytes'] / gb:.2f} GB |"
    )
    print(
        f"| daskglm `from_long(..., to=store)` | {ours['seconds']:.1f} | {ours['peak_bytes'] / gb:.2f} GB "
        f"({record['memory_ratio']:.2f}x pandas) |"
    )
    print(f"\nstore {store_bytes / 1e6:.0f} MB; largest |store - truth| over all columns: {worst:.3g}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
