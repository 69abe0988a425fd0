"""Long tables to panels: :func:`from_long`, and the streaming ingest behind ``daskglm ingest``.

A long table has one row per observed cell: key columns naming the cell (``exporter``,
``importer``, ``year``) and value columns. :func:`from_long` turns it into the panel
``xarray.Dataset`` that :func:`daskglm.fit` reads:

* the coordinates of each dim are the distinct labels of its key column, sorted;
* each value column is placed on the *smallest* subset of the dims within whose groups it is
  constant, checked exactly on every row (a column constant within every exporter x year group
  lives on ``(exporter, year)``); ``ds[v].attrs["long_table_dims"]`` records the subset;
* cells of the grid without a row are NaN (in the response and every full-grid column).

The table is read in pieces (parquet row groups, CSV blocks, dask partitions, slices of a
DataFrame), twice:

1. **scan**: the distinct labels of each key, in order of first appearance, and for every value
   column and every proper subset ``S`` of the dims a "first value per group of ``S``" array
   (indexed by the groups' codes, so its size is that of the sub-grid, grown as labels appear)
   plus the verdict "varies within a group". A column found to vary on ``S`` varies on every
   subset of ``S``, so those are dropped with it; after the first piece only the subsets a
   column may still live on are tracked. The arrays of the surviving minimal subsets *are* the
   small variables, so only full-grid columns are read again.
2. **place**: the full-grid columns are scattered into the chunks of the grid they touch (a
   cell's chunk is its coordinates divided by the chunk lengths). In memory, straight into
   numpy arrays. Into a zarr store, each piece's rows are bucketed by chunk and held in memory
   up to a budget, beyond which the buckets are appended to per-chunk spill files (an external
   bucket sort, so a shuffled table costs no more than a sorted one); at the end each chunk is
   assembled once, checked for duplicate cells, and written with a zarr region write. Memory is
   one piece, the bucket budget and one chunk, never the whole table.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import xarray as xr

from .table_passes import CHUNK_CELLS, DuplicateCells, MemorySink, PieceColumns, SubsetDetector, chunk_shape
from .table_sources import (
    PIECE_ROWS,
    CategoryCoder,
    LevelCoder,
    Source,
    check_arrow_types,
    check_pandas_dtypes,
    is_numeric_type,
    open_source,
    read_column,
)
from .zarr_store import (
    CODECS,
    DEFAULT_CODEC,
    did_you_mean,
    progress_bar,
    write_store,
    write_zarr,
    zarr_compressors,
)

__all__ = [
    "from_long",
    "write_zarr",
    "zarr_compressors",
    "DuplicateCells",
    "PIECE_ROWS",
    "CHUNK_CELLS",
    "SPARSE_FACTOR",
    "CODECS",
    "DEFAULT_CODEC",
]

log = logging.getLogger("daskglm")
#: a grid this many times larger than the table gets a warning
SPARSE_FACTOR = 20


def _check_args(source: Source, dims, values, full) -> tuple[list[str], list[str], list[str]]:
    if isinstance(dims, str):
        dims = [dims]
    dims = list(dims or [])
    if not dims:
        raise ValueError("dims= is empty; name the key columns that identify a cell, e.g. dims=['i', 'j']")
    if len(set(dims)) < len(dims):
        raise ValueError(f"dims={dims} names a column twice")
    cols = source.columns
    for d in dims:
        if d not in cols:
            raise ValueError(
                f"dims: {d!r} is not a column of {source.describe}{did_you_mean(d, cols)}; "
                f"its columns are {cols}"
            )
    full = [full] if isinstance(full, str) else list(full or [])
    if values is None:
        values = [c for c in cols if c not in dims]
    else:
        values = [values] if isinstance(values, str) else list(values)
        for v in values:
            if v in dims:
                raise ValueError(f"values: {v!r} is also in dims=; a key column cannot be a value column")
    for v in values + [f for f in full if f not in values]:
        if v not in cols:
            raise ValueError(
                f"{v!r} is not a column of {source.describe}{did_you_mean(v, cols)}; its columns are {cols}"
            )
    values += [f for f in full if f not in values]
    return dims, values, full


def _release() -> None:
    """Hand the memory arrow's pool keeps from freed pieces back to the system (mimalloc holds
    tens of MB otherwise)."""
    pa.default_memory_pool().release_unused()


def _where(dims: Sequence[str], s: tuple) -> str:
    return "(" + ", ".join(dims[a] for a in s) + ")"


def from_long(
    table,
    dims: Sequence[str],
    to: str | os.PathLike | None = None,
    chunks: dict[str, int] | int | None = None,
    *,
    values: Sequence[str] | None = None,
    y: str | Sequence[str] | None = None,
    dtype="float64",
    overwrite: bool = False,
    codec: str = DEFAULT_CODEC,
    storage_options: dict | None = None,
    progress: bool | None = None,
    piece_rows: int = PIECE_ROWS,
    memory: int = 128 << 20,
    spill_dir: str | os.PathLike | None = None,
    categorical: Sequence[str] | None = None,
) -> xr.Dataset:
    """Turn a long table (one row per observed cell) into a panel ``xarray.Dataset``.

    Parameters
    ----------
    table : pandas.DataFrame, pyarrow.Table, dask.dataframe.DataFrame, str or path
        The table, or the path/URL/glob of parquet or CSV files, or a folder of them.
    dims : list of str
        The key columns naming a cell; they become the panel dims, in this order, with their
        distinct labels (strings, integers, dates), sorted, as coordinates.
    to : str or path, optional
        Write a chunked zarr store here, streaming the table piece by piece, and return it
        opened lazily. Without it the panel is built in memory (numpy-backed).
    chunks : dict or int, optional
        Chunk lengths of the store per dim (``{"exporter": 50}``; other dims whole), or a number
        of cells per chunk (default ``CHUNK_CELLS`` = 2**19, splitting the leading dims).
    values : list of str, optional
        The value columns to keep (default: every column that is not a key).
    y : str or list of str, optional
        Column(s) placed on the full grid whatever they vary over: the response.
    dtype : str or numpy dtype
        Dtype of the value arrays (``"float32"`` halves a store); integers and booleans (0/1)
        are converted, missing cells are NaN.
    overwrite : bool
        Replace an existing store at ``to``.
    codec : str
        Compression of the store's value arrays: ``"lz4"`` (default: blosc-lz4, fast to
        decode, counts and dummies ~2.4x smaller), ``"zstd[:level]"`` (~25% smaller again, 2-3x
        the decoding time) or ``"none"`` (fastest to read from the page cache, largest); see
        :func:`zarr_compressors` and ``benchmarks/CODECS.md``.
    storage_options : dict, optional
        fsspec options for a table URL and for ``to``.
    progress : bool, optional
        Progress bars over the rows (``None``: when stderr is a terminal).
    piece_rows : int
        Rows per piece (parquet row groups may cut pieces shorter).
    memory : int
        Bytes of bucketed rows held in memory while writing a store before they are spilled to
        temporary files (in ``spill_dir``, default the system's temporary folder).
    categorical : list of str, optional
        Value columns that may hold labels (strings, pandas categories, dates): such a column
        is kept as its labels (an object array, NaN where missing; numeric labels as float64),
        placed on the dims it varies over like any other, for a formula's ``C(col)``. A
        categorical column that is numeric already is read as numbers. In memory only: a
        store (``to=``) holds numeric arrays.

    Returns
    -------
    xarray.Dataset
        ``ds[v].attrs["long_table_dims"]`` lists the dims each value column was placed on;
        ``ds.attrs["from_long"]`` is the one-line report (also logged on the ``daskglm``
        logger), ``ds.attrs["fill_rate"]`` the share of grid cells with a row.

    Raises
    ------
    ValueError
        A dim that is not a column, a key with missing values, a non-numeric value column
        (not in ``categorical``), or duplicate keys (the message shows some).
    """
    t0 = time.perf_counter()
    compressors = zarr_compressors(codec)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype={dtype} must be a float dtype (float64 or float32): missing cells are NaN")
    if isinstance(table, pd.DataFrame) and not isinstance(dims, str):
        levels = [d for d in dims if d not in table.columns and d in table.index.names]
        if levels:
            table = table.reset_index(level=levels)
    keys = [dims] if isinstance(dims, str) else list(dims or [])
    source = open_source(table, storage_options, int(piece_rows), keys)
    dims, values, full = _check_args(source, dims, values, y)
    categorical = [categorical] if isinstance(categorical, str) else list(categorical or [])
    categorical = [c for c in categorical if c in values]
    if source.pandas_dtypes is not None:
        check_pandas_dtypes(source.pandas_dtypes, values, dims, categorical)
    nd = len(dims)
    coders = [LevelCoder(d) for d in dims]
    detector = SubsetDetector(nd, values, set(full))
    labelled: dict[str, CategoryCoder] = {}  # the categorical columns that hold labels

    # pass 1: labels and where each column lives
    n_rows = 0
    bar = progress_bar(progress, source.n_rows, "daskglm scan 1/2")
    try:
        for batch in source.batches(dims + values):
            if n_rows == 0:
                check_arrow_types(batch.schema, values, dims, categorical)
                for c in categorical:
                    if not is_numeric_type(batch.schema.field(c).type) and c not in labelled:
                        labelled[c] = CategoryCoder(c)
                if labelled and to is not None:
                    first = batch.schema.field(next(iter(labelled))).type
                    raise ValueError(
                        f"column(s) {sorted(labelled)} hold labels (type {first}),"
                        " which a zarr store written by from_long(to=...) does not take: build the panel in "
                        "memory (no to=), or encode them as numbers first (table[col].astype('category')"
                        ".cat.codes) and use C(col) on the codes"
                    )
            n = batch.num_rows
            if n == 0:
                continue
            codes = [c.encode(batch.column(d), n_rows) for c, d in zip(coders, dims, strict=True)]
            readers = {v: cc.encode for v, cc in labelled.items()}
            vals = PieceColumns(batch, codes, readers)
            detector.update(codes, vals, [len(c.index) for c in coders], n)
            n_rows += n
            bar.update(n)
            _release()
    except pa.ArrowException as err:
        raise ValueError(f"could not read {source.describe}: {err}") from err
    finally:
        bar.close()
    if n_rows == 0:
        raise ValueError(f"{source.describe} has no rows")
    orders = [c.freeze() for c in coders]
    sizes = [len(c.index) for c in coders]
    grid = math.prod(sizes)
    placed = {v: detector.placement(v) for v in values}
    on_grid = [v for v in values if len(placed[v]) == nd]
    coords = {d: c.index.to_numpy() for d, c in zip(dims, coders, strict=True)}
    small = {}
    for v in values:
        s = placed[v]
        if len(s) < nd:
            arr = detector.values_on(v, s, sizes, orders)
            arr = labelled[v].decode(arr) if v in labelled else arr.astype(dtype)
            small[v] = (tuple(dims[a] for a in s), arr)
    nested = detector.nested()
    del detector

    fill = n_rows / grid
    report = (
        f"from_long: {n_rows:,} rows -> "
        + " x ".join(f"{d}={n:,}" for d, n in zip(dims, sizes, strict=True))
        + f" ({grid:,} cells, fill {fill:.1%}); "
        + "; ".join(f"{v} on {_where(dims, placed[v])}" for v in values)
    )
    if grid > SPARSE_FACTOR * n_rows:
        _warn_sparse(dims, sizes, n_rows, grid, nested)

    def attrs_of(v):
        attrs = {"long_table_dims": [dims[a] for a in placed[v]]}
        if v in labelled and labelled[v].categories is not None:
            attrs["categories"] = labelled[v].categories  # a pandas categorical's order, for C()
        return attrs

    ds_attrs = {"from_long": report, "fill_rate": fill, "n_rows": n_rows}
    clock = {"scan": time.perf_counter() - t0}

    # pass 2: the full-grid columns
    def place(sink):
        frozen = coders
        done = 0
        bar = progress_bar(progress, n_rows, "daskglm place 2/2")
        try:
            for batch in source.batches(dims + on_grid):
                n = batch.num_rows
                if n == 0:
                    continue
                codes = [c.encode(batch.column(d), done) for c, d in zip(frozen, dims, strict=True)]
                cols = {
                    v: labelled[v].encode(batch.column(v)) if v in labelled else read_column(batch, v)
                    for v in on_grid
                }
                sink.add(codes, cols, n)
                done += n
                bar.update(n)
                _release()
        except pa.ArrowException as err:
            raise ValueError(f"could not read {source.describe}: {err}") from err
        finally:
            bar.close()
        if done != n_rows:
            raise ValueError(
                f"{source.describe} had {n_rows} rows in the first pass and {done} in the second"
            )
        clock["place"] = time.perf_counter() - t0 - clock["scan"]

    if to is None:
        sink = MemorySink(sizes, on_grid, dtype, coders, dims)
        place(sink)
        ds = xr.Dataset(coords=coords, attrs=ds_attrs)
        for v in values:
            if v in small:
                ds[v] = xr.Variable(small[v][0], small[v][1], attrs=attrs_of(v))
            else:
                arr = labelled[v].decode(sink.arrays[v]) if v in labelled else sink.arrays[v]
                ds[v] = xr.Variable(tuple(dims), arr, attrs=attrs_of(v))
        ds = ds[values].assign_coords(coords)  # every dim, also one no column varies over
    else:
        chunk = chunk_shape(dict(zip(dims, sizes, strict=True)), chunks)
        ds = write_store(
            to, dims, sizes, chunk, coords, values, small, on_grid, attrs_of, ds_attrs, dtype, coders,
            place, overwrite, storage_options, progress, memory, spill_dir, compressors,
        )  # fmt: skip
    total = time.perf_counter() - t0
    log.info("%s (%.1fs)", report, total)
    log.info(
        "from_long: %.1fs scanning, %.1fs placing, %.1fs assembling and writing chunks",
        clock["scan"], clock["place"], total - clock["scan"] - clock["place"],
    )  # fmt: skip
    return ds


def _warn_sparse(dims, sizes, n_rows, grid, nested) -> None:
    hints = []
    for a, b in nested:
        hints.append(
            f"{dims[a]!r} determines {dims[b]!r} (each {dims[a]} has one {dims[b]}): drop {dims[b]!r} from "
            f"dims and keep it as a column, or use the pair as one key"
        )
    if not hints:
        big = sorted(range(len(dims)), key=lambda a: -sizes[a])[:2]
        hints.append(
            "the dims with the most labels are "
            + ", ".join(f"{dims[a]!r} ({sizes[a]:,})" for a in big)
            + ": is one of them a row id, or nested in another dim?"
        )
    warnings.warn(
        f"the {' x '.join(dims)} grid has {grid:,} cells for {n_rows:,} rows ({grid / n_rows:.0f}x, fill "
        f"{n_rows / grid:.1%}); reconsider the dims: " + "; ".join(hints),
        UserWarning,
        stacklevel=3,
    )
