"""Writing panels to zarr: codecs (``--codec``), :func:`write_zarr`, and the chunk-by-chunk store
writer behind ``daskglm ingest``."""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr

from .table_passes import ChunkSink

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "did_you_mean",
    "progress_bar",
    "zarr_compressors",
    "write_zarr",
    "write_store",
]

log = logging.getLogger("daskglm")

#: the compression codecs of the stores daskglm writes (``codec="name[:level]"``)
CODECS = ("none", "lz4", "zstd")
#: the codec of ``from_long(..., to=)``, ``write_zarr`` and ``daskglm simulate/ingest``: blosc-lz4
#: with bit shuffle decodes 2 GB in ~0.6 CPU seconds (zstd ~1.5) and makes typical data (counts,
#: dummies, covariates on a few levels) 2.4x smaller; see benchmarks/CODECS.md
DEFAULT_CODEC = "lz4"


def did_you_mean(name: str, options: Sequence[str]) -> str:
    hit = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {hit[0]!r}?)" if hit else ""


def progress_bar(show: bool | None, total, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    if show is None:
        show = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, disable=not show, file=sys.stderr, leave=False
    )


_LEVELS = {"lz4": (1, 9, 5), "zstd": (1, 22, 3)}  # codec -> lowest, highest, default level


def zarr_compressors(codec: str = DEFAULT_CODEC, option: str = "codec") -> tuple | None:
    """The zarr (v3) ``compressors`` of a codec named ``"name[:level]"``.

    Parameters
    ----------
    codec : str
        ``"none"``: chunks stored raw; ``"lz4"``: blosc-lz4 with bit shuffle (levels 1-9,
        default 5); ``"zstd"``: zstd (levels 1-22, default 3: zarr's own default codec, what
        daskglm wrote before it had a choice). A level follows a colon: ``"zstd:1"``, ``"lz4:9"``.
    option : str
        The option's name in error messages (``"--codec"`` on the command line).

    Returns
    -------
    tuple of zarr codecs, or None
        For the ``compressors`` of ``zarr.create_array`` / an xarray ``to_zarr`` encoding
        (``None``: no compression).

    Raises
    ------
    ValueError
        An unknown codec or a level out of range, naming ``option`` and the choices.
    """
    from zarr.codecs import BloscCodec, ZstdCodec

    choices = "none, lz4[:LEVEL 1-9] or zstd[:LEVEL 1-22] (e.g. 'lz4', 'zstd:3')"
    if not isinstance(codec, str):
        raise ValueError(f"{option}={codec!r} must be a string: choose {choices}")
    name, sep, level_text = codec.strip().lower().partition(":")
    if name not in CODECS:
        raise ValueError(f"{option}={codec!r} is not a codec{did_you_mean(name, CODECS)}: choose {choices}")
    if name == "none":
        if sep:
            raise ValueError(f"{option}={codec!r}: 'none' takes no level; choose {choices}")
        return None
    low, high, level = _LEVELS[name]
    if sep:
        if not level_text.strip().isdigit() or not low <= int(level_text) <= high:
            raise ValueError(f"{option}={codec!r}: the {name} level must be an integer {low}-{high}")
        level = int(level_text)
    if name == "lz4":
        return (BloscCodec(cname="lz4", clevel=level, shuffle="bitshuffle"),)
    return (ZstdCodec(level=level),)


def write_zarr(
    ds: xr.Dataset,
    to: str | os.PathLike,
    *,
    codec: str = DEFAULT_CODEC,
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> None:
    """Write a panel to a zarr (v3) store, its data variables compressed with ``codec``.

    The store's chunks are the variables' dask chunks (as ``Dataset.to_zarr``); a dask-backed
    panel (``daskglm.api.simulate.simulate_panel``) is computed and written chunk by chunk.

    Parameters
    ----------
    ds : xarray.Dataset
        The panel.
    to : str or path
        The store (a local path or an fsspec URL).
    codec : str
        ``"lz4"`` (default), ``"zstd[:level]"`` or ``"none"``: see :func:`zarr_compressors`.
        From ``benchmarks/CODECS.md``: lz4 decodes fast and makes counts and dummies ~2.4x
        smaller; zstd ~25% smaller again at 2-3x lz4's decoding time; raw chunks are the fastest
        to read while they sit in the page cache, and the largest.
    overwrite : bool
        Replace an existing store (otherwise an existing ``to`` is an error).
    storage_options : dict, optional
        fsspec options for ``to``.
    """
    compressors = zarr_compressors(codec)
    encoding = {v: {"compressors": compressors} for v in ds.data_vars}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds.to_zarr(
            os.fspath(to),
            mode="w" if overwrite else "w-",
            encoding=encoding,
            storage_options=storage_options,
            zarr_format=3,
        )


def write_store(
    to, dims, sizes, chunk, coords, values, small, on_grid, attrs_of, ds_attrs, dtype, coders,
    place, overwrite, storage_options, progress, memory, spill_dir, compressors,
) -> xr.Dataset:  # fmt: skip
    import dask.array as da
    import fsspec
    import zarr

    path = os.fspath(to)
    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    existed = fs.exists(root)
    if existed and not overwrite:
        raise FileExistsError(
            f"{path!r} exists; pass overwrite=True (--overwrite) to replace it, or another path"
        )
    template = xr.Dataset(coords=coords, attrs=ds_attrs)
    encoding = {}
    for v in values:
        if v in small:
            vdims, arr = small[v]
            template[v] = xr.Variable(vdims, arr, attrs=attrs_of(v))
            ch = tuple(chunk[dims.index(d)] for d in vdims)
        else:
            template[v] = xr.Variable(
                tuple(dims), da.full(tuple(sizes), np.nan, dtype=dtype, chunks=chunk), attrs=attrs_of(v)
            )
            ch = chunk
        encoding[v] = {"compressors": compressors}
        if ch:
            encoding[v]["chunks"] = ch
    created = False
    sink = ChunkSink(sizes, chunk, on_grid, dtype, coders, dims, int(memory), spill_dir)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            template.to_zarr(
                path,
                mode="w",
                compute=False,
                encoding=encoding,
                storage_options=storage_options,
                zarr_format=3,
            )
        created = True
        place(sink)
        group = zarr.open_group(path, mode="r+", storage_options=storage_options)
        arrays = [group[v] for v in on_grid]
        ids = sink.chunk_ids()
        bar = progress_bar(progress, len(ids), "daskglm write chunks", unit="chunks")
        # compressing and writing a chunk overlaps with assembling the next (at most 2 in flight)
        with ThreadPoolExecutor(max_workers=2) as pool:
            flight: list = []
            try:
                for cid in ids:
                    region, block = sink.assemble(cid)
                    flight.append(
                        [
                            pool.submit(arr.__setitem__, region, b)
                            for arr, b in zip(arrays, block, strict=True)
                        ]
                    )
                    del block
                    while len(flight) > 1:
                        for fut in flight.pop(0):
                            fut.result()
                        bar.update(1)
                for futs in flight:
                    for fut in futs:
                        fut.result()
                    bar.update(1)
            finally:
                bar.close()
        if sink.spill_bytes:
            log.info("from_long: %.0f MB of rows went through spill files", sink.spill_bytes / 1e6)
    except BaseException:
        if created:
            fs.rm(root, recursive=True)
        raise
    finally:
        sink.close()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        return xr.open_zarr(path, storage_options=storage_options)
