"""zarr codecs and chunk shapes for reading a panel from local disk: size, write, floor, fit.

    flock /tmp/notes/bench.lock python benchmarks/codecs.py [--sizes 400,500,500] [--root /tmp/codecs]
    ... --no-fit --repeat 3 --previous OLD.json   # floors only, kept beside an earlier run's table
    ... --decode-only                             # single-threaded decode table, added to the JSON
    ... --render                                  # rewrite CODECS.md from codecs.json (its "notes")

(``codecs.json`` holds the three: a run with fits, a floors-only run with CPU seconds, the
decode table; ``notes`` are the conclusions written after looking at them.)

The panel: 3-D float32 Poisson written by ``daskglm.api.simulate`` (y, 4 full-grid covariates and
4 covariates on each of (i,j), (i,k), (j,k), i, j, k: 29 coefficients), held in memory once and
written to zarr with each codec / chunk shape, so the write time is compression and I/O only.
Simulated float32 normals are incompressible noise, so a second, *compressible* panel is
measured too: y Poisson counts with ~80% zeros, full-grid covariates a 0/1 dummy, an integer on
5 levels, a normal rounded to one decimal and one float32 normal.

For each store:

* ``disk_mb``: bytes of the store's files;
* ``write_s``: ``to_zarr`` from memory plus ``fsync`` of every file (on its disk);
* ``floor_cold_s``: one plain ``dask.compute`` of the sum of every full-grid array (threaded
  scheduler) right after the store's files were evicted from the page cache with
  ``posix_fadvise(DONTNEED)`` (no root needed; the virtual disk may still be cached by the
  host, so "cold" is "not in this machine's page cache");
* ``floor_warm_s``: the same pass, best of two, with the files in the page cache (every store
  here fits in RAM): decompression and dask overhead only;
* ``fit_s``, ``iteration_s``: a Newton Poisson fit ``dg.fit(store, ..., persist=False,
  max_iter=1)`` (streamed from the store on every pass, threaded scheduler, warm cache): its
  seconds and passes (the setup pass, the start's evaluation, one iteration) and the seconds of
  the iteration (``--max-iter N``: the median over N). On a shared 2-core machine a full fit of
  1e8 cells took 6 minutes, so only some stores are fitted: the iteration's cost is the kernel
  plus one read, and the read is what the codecs change.

Codecs (zarr v3 codec objects): none; blosc-lz4 with byte shuffle and with bit shuffle;
blosc-zstd levels 1 and 3 (byte shuffle); zstd levels 1 and 3 (zarr-python 3's default codec
is ``ZstdCodec(level=0)``, i.e. zstd's default level 3, no shuffle); and the best of them
sharded (4 inner chunks per shard). Chunk shapes: 1M, 4M and 12.5M cells cut along the first
axis, 4M cut along the last axis, and a ~1M cube (what ``simulate_panel`` chose before).
Writes ``benchmarks/codecs.json`` and ``benchmarks/CODECS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

import daskglm as dg
from daskglm.api.simulate import simulate_panel

warnings.simplefilter("ignore")
HERE = Path(__file__).parent


# --------------------------------------------------------------------------- codecs
def codec_table() -> dict[str, tuple | None]:
    """Name -> zarr v3 ``compressors`` (``None``: stored raw)."""
    return {
        "none": None,
        "blosc-lz4-shuffle": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
        "blosc-lz4-bitshuffle": (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),),
        "blosc-zstd1-shuffle": (BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),),
        "blosc-zstd3-shuffle": (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
        "zstd1": (ZstdCodec(level=1),),
        "zstd3": (ZstdCodec(level=3),),
    }


def chunk_shapes(sizes: dict[str, int]) -> dict[str, dict[str, int]]:
    """Named chunk shapes (dim -> length) of roughly 1M, 4M, 12.5M cells."""
    (d0, n0), (d1, n1), (d2, n2) = sizes.items()
    plane = n1 * n2

    def first(cells):
        return {d0: max(1, min(n0, round(cells / plane))), d1: n1, d2: n2}

    return {
        "1M-first": first(1e6),
        "4M-first": first(4e6),
        "12M-first": first(12.5e6),
        "4M-last": {d0: n0, d1: n1, d2: max(1, min(n2, round(4e6 / (n0 * n1))))},
        "1M-cube": {d0: min(n0, 100), d1: min(n1, 100), d2: min(n2, 100)},
    }


# --------------------------------------------------------------------------- data
def noise_panel(sizes: dict[str, int]) -> xr.Dataset:
    """``daskglm.api.simulate``'s Poisson panel in float32, computed into memory."""
    ds = simulate_panel(sizes, "poisson", seed=1, dtype=np.float32)
    return dask.persist(ds, scheduler="threads")[0]


def compressible_panel(sizes: dict[str, int]) -> xr.Dataset:
    """Realistic data: counts with many zeros, a dummy, a 5-level integer, a one-decimal normal."""
    ds = simulate_panel(sizes, "poisson", seed=2, dtype=np.float32)
    dims = tuple(sizes)
    full = ds["y"].data.chunks
    rs = da.random.RandomState(3)
    x1 = (rs.random_sample(ds["y"].shape, chunks=full) < 0.3).astype(np.float32)
    x2 = rs.randint(0, 5, size=ds["y"].shape, chunks=full).astype(np.float32)
    x3 = da.round(rs.standard_normal(ds["y"].shape, chunks=full), 1).astype(np.float32)
    x4 = rs.standard_normal(ds["y"].shape, chunks=full).astype(np.float32)
    eta = -2.2 + 0.5 * x1 + 0.1 * x2 + 0.2 * x3 + 0.1 * x4

    def draw(e, block_id=None):
        return np.random.default_rng([5, *block_id]).poisson(np.exp(e)).astype(np.float32)

    y = da.map_blocks(draw, eta, dtype=np.float32)
    for c, x in enumerate((x1, x2, x3, x4), start=1):
        ds[f"x_{''.join(dims)}_{c}"] = (dims, x)
    ds["y"] = (dims, y)
    return dask.persist(ds, scheduler="threads")[0]


# --------------------------------------------------------------------------- decode alone
def decode_speeds(repeat: int = 7) -> list[dict]:
    """Single-threaded encode/decode of one 4M-cell float32 chunk per variable and codec (best of
    ``repeat``: the least disturbed by other processes), with the numcodecs classes zarr's
    ``BloscCodec``/``ZstdCodec`` call. ns per cell of the chunk; ratio = raw / encoded bytes."""
    import numcodecs

    shape = {"i": 16, "j": 500, "k": 500}
    noise = simulate_panel(shape, "poisson", seed=1, dtype=np.float32, chunks=shape).compute()
    comp = compressible_panel(shape)
    arrays = {
        "noise y (counts, mean ~3)": noise["y"].values,
        "noise x (float32 normal)": noise["x_ijk_1"].values,
        "compressible y (80% zeros)": comp["y"].values,
        "compressible dummy": comp["x_ijk_1"].values,
        "compressible 5 levels": comp["x_ijk_2"].values,
        "compressible 1 decimal": comp["x_ijk_3"].values,
    }
    blosc = numcodecs.Blosc
    codecs = {
        "blosc-lz4-shuffle": blosc(cname="lz4", clevel=5, shuffle=blosc.SHUFFLE),
        "blosc-lz4-bitshuffle": blosc(cname="lz4", clevel=5, shuffle=blosc.BITSHUFFLE),
        "blosc-zstd1-shuffle": blosc(cname="zstd", clevel=1, shuffle=blosc.SHUFFLE),
        "zstd1": numcodecs.Zstd(level=1),
        "zstd3": numcodecs.Zstd(level=3),
    }
    out = []
    blosc_threads = numcodecs.blosc.set_nthreads(1)
    try:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            for cname, codec in codecs.items():
                enc_s = dec_s = np.inf
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    buf = codec.encode(arr)
                    t1 = time.perf_counter()
                    back = np.frombuffer(codec.decode(buf), dtype=arr.dtype)
                    t2 = time.perf_counter()
                    enc_s, dec_s = min(enc_s, t1 - t0), min(dec_s, t2 - t1)
                assert np.array_equal(back, arr.ravel(), equal_nan=True)
                row = {
                    "array": name,
                    "codec": cname,
                    "ratio": arr.nbytes / len(buf),
                    "encode_ns_cell": enc_s / arr.size * 1e9,
                    "decode_ns_cell": dec_s / arr.size * 1e9,
                    "decode_mb_s": arr.nbytes / dec_s / 1e6,
                }
                out.append(row)
                print(
                    f"{name:28s} {cname:21s} ratio {row['ratio']:5.2f}  encode {row['encode_ns_cell']:5.2f}"
                    f" decode {row['decode_ns_cell']:5.2f} ns/cell ({row['decode_mb_s']:5.0f} MB/s)",
                    flush=True,
                )
    finally:
        numcodecs.blosc.set_nthreads(blosc_threads)
    return out


# --------------------------------------------------------------------------- store
def files(path: str) -> list[str]:
    return [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(f) for f in files(path))


def sync(path: str) -> None:
    for f in files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(path: str) -> None:
    """Drop this store's (clean, synced) pages from the page cache: only these files."""
    for f in files(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write(ds: xr.Dataset, path: str, chunks: dict[str, int], compressors, shard: int) -> float:
    """Write ``ds`` with these zarr chunks (``shard`` inner chunks per shard along the first
    chunked dim); dask chunks = the shard (or chunk) so every write covers whole shards."""
    if os.path.exists(path):
        shutil.rmtree(path)
    outer = dict(chunks)
    if shard > 1:
        d0 = next((d for d in ds["y"].dims if chunks[d] < ds.sizes[d]), ds["y"].dims[0])
        outer[d0] = min(ds.sizes[d0], chunks[d0] * shard)
    enc = {}
    for v in ds.data_vars:
        dims = ds[v].dims
        e = {"chunks": tuple(chunks[d] for d in dims), "compressors": compressors}
        if shard > 1:
            e["shards"] = tuple(outer[d] for d in dims)
        enc[v] = e
    t0 = time.perf_counter()
    ds.chunk(outer).to_zarr(path, mode="w", encoding=enc, consolidated=False)
    sync(path)
    return time.perf_counter() - t0


def floor_once(path: str) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread) of one plain pass over the full grid."""
    ds = xr.open_zarr(path, consolidated=False)
    arrays = [ds[v].data for v in ds.data_vars if ds[v].ndim == ds["y"].ndim]
    t0, c0 = time.perf_counter(), time.process_time()
    dask.compute(*[a.astype("float64").sum() for a in arrays], scheduler="threads")
    return time.perf_counter() - t0, time.process_time() - c0


def fit(path: str, max_iter: int) -> dict:
    ds = xr.open_zarr(path, consolidated=False)
    x = [v for v in ds.data_vars if v.startswith("x_")]
    t0 = time.perf_counter()
    res = dg.fit(path, "y", x, "poisson", persist=False, progress=False, max_iter=max_iter)
    secs = np.diff(res.history["seconds"].to_numpy())
    return {
        "fit_s": time.perf_counter() - t0,
        "iteration_s": float(np.median(secs)),
        "iterations": int(res.n_iter),
        "passes": int(res.passes),
        "converged": bool(res.converged),
        "params": {k: float(v) for k, v in res.params.items()},
    }


def measure(
    ds, root, label, shape_name, chunks, codec, compressors, shard, do_fit, full_bytes, max_iter, repeat
) -> dict:
    path = f"{root}/{label}-{shape_name}-{codec}{'-sh' + str(shard) if shard > 1 else ''}.zarr"
    rec = {"data": label, "shape": shape_name, "chunks": chunks, "codec": codec, "shard": shard}
    rec["write_s"] = write(ds, path, chunks, compressors, shard)
    rec["disk_mb"] = disk_bytes(path) / 1e6
    evict(path)
    rec["floor_cold_s"], rec["floor_cold_cpu_s"] = floor_once(path)
    warm = [floor_once(path) for _ in range(repeat)]
    rec["floor_warm_s"] = min(w for w, _ in warm)
    rec["floor_warm_cpu_s"] = min(c for _, c in warm)
    rec["full_grid_mb"] = full_bytes / 1e6
    rec["floor_warm_mb_s"] = full_bytes / 1e6 / rec["floor_warm_s"]
    rec["floor_cold_mb_s"] = full_bytes / 1e6 / rec["floor_cold_s"]
    if do_fit:
        rec.update(fit(path, max_iter))
    shutil.rmtree(path)
    print(
        f"{label:13s} {shape_name:9s} {codec:21s} sh={shard} {rec['disk_mb']:7.0f} MB"
        f"  write {rec['write_s']:5.1f}s"
        f"  floor cold {rec['floor_cold_s']:5.2f}s warm {rec['floor_warm_s']:5.2f}s"
        f" ({rec['floor_warm_mb_s']:5.0f} MB/s) cpu {rec['floor_warm_cpu_s']:5.2f}s"
        + (f"  fit {rec['fit_s']:5.1f}s  {rec['iteration_s']:5.2f}s/it" if do_fit else ""),
        flush=True,
    )
    return rec


# --------------------------------------------------------------------------- report
def _table(run: dict) -> list[str]:
    lines = [
        f"Run of {run['when']} (commit {run['commit']}, {run.get('note', 'fits')}):",
        "",
        "| data | chunks | codec | shard | disk MB | ratio | write s | floor cold s (MB/s) |"
        " floor warm s (MB/s) | warm CPU s | fit s (passes) | s/iteration |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run["cases"]:
        fit_s = f"{r['fit_s']:.0f} ({r['passes']})" if "fit_s" in r else ""
        it_s = f"{r['iteration_s']:.1f}" if "iteration_s" in r else ""
        cpu = f"{r['floor_warm_cpu_s']:.2f}" if "floor_warm_cpu_s" in r else ""
        lines.append(
            f"| {r['data']} | {r['shape']} {tuple(r['chunks'].values())} | {r['codec']} | {r['shard']} |"
            f" {r['disk_mb']:.0f} | {r['total_mb'] / r['disk_mb']:.2f} | {r['write_s']:.1f} |"
            f" {r['floor_cold_s']:.2f} ({r['floor_cold_mb_s']:.0f}) |"
            f" {r['floor_warm_s']:.2f} ({r['floor_warm_mb_s']:.0f}) | {cpu} | {fit_s} | {it_s} |"
        )
    return lines + [""]


def markdown(record: dict) -> str:
    last = record["runs"][-1]
    lines = [
        "# zarr codecs and chunk shapes: reading a panel from local disk",
        "",
        "`flock /tmp/notes/bench.lock python benchmarks/codecs.py`"
        f" (zarr {record['zarr']}, {record['machine']})."
        f" Panel {last['sizes']} = {last['cells']:.3g} cells, float32,"
        f" {last['full_grid_mb']:.0f} MB of full-grid arrays (y + 4 covariates) plus small blocks."
        " Other engineers were running tests and benchmarks on the same 2 cores meanwhile (load 5-9):"
        " wall times are noisy, by up to 2x; the CPU seconds are steadier.",
        "",
        "Floor = one `dask.compute` of the sum of every full-grid array read from the store (threaded"
        " scheduler). *cold*: the store's files evicted from the page cache first (`posix_fadvise`"
        " DONTNEED; the virtual disk may still be cached by the host); *warm*: files in the page cache"
        " (best of the repeats): decompression and dask overhead only; *warm CPU s*: the process's CPU"
        " seconds in the best warm pass (both threads). MB/s = uncompressed full-grid MB per"
        " second. Ratio = uncompressed / disk (all variables). Fit = Newton Poisson fit streamed from"
        " the store (`persist=False`, warm cache): its seconds and passes, and seconds per iteration."
        " Write = `to_zarr` from memory + `fsync` of every file.",
        "",
    ]
    if record.get("notes"):
        lines += [record["notes"], ""]
    if record.get("decode"):
        lines += [
            "Decoding alone: one 4M-cell float32 chunk, one thread (numcodecs, the library under zarr's"
            " codecs), best of 7; ns per cell and MB/s of raw data:",
            "",
            "| array | codec | ratio | encode ns/cell | decode ns/cell (MB/s) |",
            "|---|---|---|---|---|",
        ]
        for r in record["decode"]:
            lines.append(
                f"| {r['array']} | {r['codec']} | {r['ratio']:.2f} | {r['encode_ns_cell']:.2f} |"
                f" {r['decode_ns_cell']:.2f} ({r['decode_mb_s']:.0f}) |"
            )
        lines.append("")
    for run in record["runs"]:
        lines += _table(run)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="400,500,500", help="i,j,k lengths (default 1e8 cells)")
    p.add_argument("--root", default="/tmp/codecs", help="folder for the stores (deleted as measured)")
    p.add_argument("--out", default=str(HERE / "codecs.json"))
    p.add_argument("--md", default=str(HERE / "CODECS.md"))
    p.add_argument("--budget", type=float, default=22 * 60, help="seconds after which fits are skipped")
    p.add_argument("--no-fit", action="store_true", help="floors only (no Newton fits)")
    p.add_argument("--repeat", type=int, default=3, help="warm floor passes per store (best kept)")
    p.add_argument("--previous", default=None, help="JSON of an earlier run to keep beside this one")
    p.add_argument("--note", default="", help="what this run is, for the report")
    p.add_argument(
        "--max-iter",
        type=int,
        default=1,
        help="Newton iterations per fit (default 1: the setup pass, the start's evaluation and one"
        " iteration; the iteration's seconds are what is compared)",
    )
    p.add_argument("--render", action="store_true", help="only rewrite --md from --out (with its 'notes')")
    p.add_argument(
        "--decode-only", action="store_true", help="only the single-threaded decode table, added to --out"
    )
    a = p.parse_args()
    if a.decode_only:
        record = json.loads(Path(a.out).read_text())
        record["decode"] = decode_speeds()
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
        Path(a.md).write_text(markdown(record))
        return
    if a.render:  # e.g. after writing the conclusions into the JSON's "notes"
        Path(a.md).write_text(markdown(json.loads(Path(a.out).read_text())))
        return
    t_start = time.perf_counter()
    sizes = dict(zip("ijk", (int(s) for s in a.sizes.split(",")), strict=True))
    os.makedirs(a.root, exist_ok=True)
    codecs = codec_table()
    shapes = chunk_shapes(sizes)
    cells = int(np.prod(list(sizes.values())))
    cases: list[dict] = []

    def run(ds, label, shape, codec, shard=1, do_fit=True):
        do_fit = do_fit and not a.no_fit
        over = time.perf_counter() - t_start > a.budget
        full = sum(ds[v].nbytes for v in ds.data_vars if ds[v].ndim == 3)
        rec = measure(
            ds, a.root, label, shape, shapes[shape], codec, codecs[codec], shard, do_fit and not over, full,
            a.max_iter, a.repeat,
        )  # fmt: skip
        rec["total_mb"] = ds.nbytes / 1e6
        if do_fit and over:
            rec["fit_skipped"] = "time budget"
        cases.append(rec)
        return rec

    t0 = time.perf_counter()
    ds = noise_panel(sizes)
    took = time.perf_counter() - t0
    print(f"noise panel {sizes}: {ds.nbytes / 1e9:.2f} GB in memory ({took:.0f}s)", flush=True)
    base = "4M-first"
    fit_codecs = {"none", "blosc-lz4-shuffle", "zstd3"}
    for codec in codecs:
        run(ds, "noise", base, codec, do_fit=codec in fit_codecs)
    compressed = [r for r in cases if r["codec"] != "none"]
    best = min(compressed, key=lambda r: r["floor_warm_cpu_s"])["codec"]
    print(f"fastest compressed codec (warm floor CPU seconds): {best}", flush=True)
    run(ds, "noise", "1M-first", best, shard=4, do_fit=False)
    for shape in ("1M-first", "12M-first", "4M-last", "1M-cube"):
        run(ds, "noise", shape, best, do_fit=shape == "1M-cube")
        run(ds, "noise", shape, "none", do_fit=False)
    del ds

    ds = compressible_panel(sizes)
    print(f"compressible panel: {ds.nbytes / 1e9:.2f} GB in memory", flush=True)
    realistic = ("none", "blosc-lz4-shuffle", "blosc-lz4-bitshuffle", "blosc-zstd1-shuffle", "zstd1", "zstd3")
    for codec in realistic:
        run(ds, "compressible", base, codec, do_fit=codec in ("none", best))
    del ds

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE)
    this = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip(),
        "note": a.note or ("floors only" if a.no_fit else f"fits with max_iter={a.max_iter}"),
        "sizes": sizes,
        "cells": cells,
        "full_grid_mb": cases[0]["full_grid_mb"],
        "best_compressed": best,
        "max_iter": a.max_iter,
        "repeat": a.repeat,
        "seconds": time.perf_counter() - t_start,
        "cases": cases,
    }
    runs = []
    if a.previous:
        prev = json.loads(Path(a.previous).read_text())
        runs = prev.get("runs", [prev])
    record = {
        "zarr": zarr.__version__,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "decode": decode_speeds(),
        "runs": runs + [this],
    }
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    if a.md:
        Path(a.md).write_text(markdown(record))
    print(f"done in {this['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
