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

import difflib
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import pyarrow as pa
import xarray as xr

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

#: rows per piece when the table is read in slices (parquet row groups may set their own size)
PIECE_ROWS = 1 << 18
#: default number of cells in one chunk of a store written by ``from_long(..., to=...)``
CHUNK_CELLS = 1 << 19
#: a grid this many times larger than the table gets a warning
SPARSE_FACTOR = 20
#: the compression codecs of the stores daskglm writes (``codec="name[:level]"``)
CODECS = ("none", "lz4", "zstd")
#: the codec of ``from_long(..., to=)``, ``write_zarr`` and ``daskglm simulate/ingest``: blosc-lz4
#: with bit shuffle decodes 2 GB in ~0.6 CPU seconds (zstd ~1.5) and makes typical data (counts,
#: dummies, covariates on a few levels) 2.4x smaller; see benchmarks/CODECS.md
DEFAULT_CODEC = "lz4"

_PARQUET = (".parquet", ".pq", ".parq")
_CSV = (".csv", ".tsv")


# --------------------------------------------------------------------------------------------
# sources: anything that yields pyarrow RecordBatches, twice
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A table read piece by piece: ``batches(columns)`` can be called more than once."""

    describe: str
    columns: list[str]
    batches: Callable[[list[str]], Iterable[pa.RecordBatch]]
    n_rows: int | None
    pandas_dtypes: dict | None = None


def _pandas_batches(df: pd.DataFrame, columns: list[str], piece_rows: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(df), piece_rows):
        piece = df.iloc[start : start + piece_rows][columns]
        yield from pa.Table.from_pandas(piece, preserve_index=False).combine_chunks().to_batches()


def _is_dask_dataframe(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "dask" and hasattr(obj, "npartitions")


def _open_source(table, storage_options: dict | None, piece_rows: int, keys: Sequence[str]) -> _Source:
    if isinstance(table, pd.DataFrame):
        return _Source(
            "the DataFrame",
            [str(c) for c in table.columns],
            lambda cols: _pandas_batches(table, cols, piece_rows),
            len(table),
            dict(table.dtypes.items()),
        )
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if isinstance(table, pa.Table):
        return _Source(
            "the pyarrow Table",
            list(table.column_names),
            lambda cols: table.select(cols).to_batches(max_chunksize=piece_rows),
            table.num_rows,
        )
    if _is_dask_dataframe(table):

        def parts(cols):
            for i in range(table.npartitions):
                yield from _pandas_batches(table.get_partition(i)[cols].compute(), cols, piece_rows)

        return _Source(
            f"the dask DataFrame ({table.npartitions} partitions)",
            [str(c) for c in table.columns],
            parts,
            None,
            dict(table.dtypes.items()),
        )
    if isinstance(table, str | os.PathLike) or (
        isinstance(table, list | tuple) and table and all(isinstance(p, str | os.PathLike) for p in table)
    ):
        return _file_source(table, storage_options, piece_rows, keys)
    raise TypeError(
        "table must be a pandas DataFrame, a pyarrow Table, a dask DataFrame, or the path/URL/glob "
        f"of parquet or CSV files (or a folder of them), not {type(table).__name__}"
    )


def _kind(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1].lower()
    if name.startswith((".", "_")):
        return None
    if name.endswith(_PARQUET):
        return "parquet"
    if name.endswith(_CSV):
        return "csv"
    return None


def _file_source(paths, storage_options: dict | None, piece_rows: int, keys: Sequence[str]) -> _Source:
    import fsspec
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads

    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    files: list[str] = []
    fs = None
    for p in paths:
        fs, root = fsspec.core.url_to_fs(os.fspath(p), **(storage_options or {}))
        if any(ch in root for ch in "*?["):
            hits = sorted(f for f in fs.glob(root) if not fs.isdir(f))
        elif fs.isdir(root):
            hits = sorted(f for f in fs.find(root) if _kind(f))
        elif fs.exists(root):
            hits = [root]
        else:
            raise FileNotFoundError(f"no table at {os.fspath(p)!r} (no such file, folder or glob match)")
        if not hits:
            raise FileNotFoundError(
                f"{os.fspath(p)!r} holds no parquet (.parquet, .pq) or CSV (.csv, .tsv) file"
            )
        files += hits
    kinds = {_kind(f) for f in files}
    if None in kinds:
        bad = next(f for f in files if _kind(f) is None)
        raise ValueError(
            f"{bad!r} is neither parquet (.parquet, .pq, .parq) nor CSV (.csv, .tsv) by its name; "
            "rename it or read it yourself and pass a DataFrame or pyarrow Table"
        )
    if len(kinds) > 1:
        raise ValueError(f"{paths!r} mixes parquet and CSV files; pass one kind at a time")
    kind = kinds.pop()
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    if kind == "parquet":  # file by file, row group by row group: bounded memory (a dataset scan reads ahead)
        import pyarrow.parquet as pq

        def parquet_file(f, dictionary=()):
            return pq.ParquetFile(
                f if local else fs.open(f, "rb"),
                pre_buffer=False,
                buffer_size=1 << 20,
                read_dictionary=dictionary,
            )

        n_rows = sum(parquet_file(f).metadata.num_rows for f in files)
        names = parquet_file(files[0]).schema_arrow.names
        keys = [k for k in keys if k in names]

        def batches(cols):
            for f in files:
                yield from parquet_file(f, keys).iter_batches(batch_size=piece_rows, columns=cols)

    else:
        tsv = all(f.lower().endswith(".tsv") for f in files)
        fmt = pads.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter="\t" if tsv else ","),
            read_options=pacsv.ReadOptions(block_size=1 << 24),
        )
        dataset = pads.dataset(files, format=fmt, filesystem=None if local else fs)
        n_rows, names = None, list(dataset.schema.names)

        def batches(cols):
            return dataset.to_batches(
                columns=cols, batch_size=piece_rows, batch_readahead=1, fragment_readahead=1
            )

    where = files[0] if len(files) == 1 else f"{len(files)} {kind} files ({files[0]}, ...)"
    return _Source(where, names, batches, n_rows)


# --------------------------------------------------------------------------------------------
# keys and values of one piece
# --------------------------------------------------------------------------------------------


def _labels(dictionary: pa.Array) -> pd.Index:
    if pa.types.is_date(dictionary.type):
        dictionary = dictionary.cast(pa.timestamp("ms"))
    return pd.Index(dictionary.to_pandas())


class _Coder:
    """Integer codes of one key column: first-appearance order while scanning, then sorted."""

    def __init__(self, name: str):
        self.name = name
        self.index: pd.Index | None = None
        self.frozen = False

    def encode(self, arr: pa.Array, row0: int) -> np.ndarray:
        if arr.null_count:
            missing = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
            rows = ", ".join(str(row0 + int(r)) for r in missing[:5])
            raise ValueError(
                f"key column {self.name!r} is missing (NaN/null) in {arr.null_count} row(s) of this piece "
                f"(rows {rows}{', ...' if len(missing) > 5 else ''}); every row must name its cell: drop "
                f"those rows (table.dropna(subset=[{self.name!r}])) or fill them with a label of their own"
            )
        fresh = not pa.types.is_dictionary(arr.type)
        enc = arr.dictionary_encode() if fresh else arr
        labels = _labels(enc.dictionary)
        indices = enc.indices.to_numpy(zero_copy_only=False)
        if self.index is None:
            pos = np.full(len(labels), -1, dtype=np.int64)
        else:
            pos = self.index.get_indexer(labels).astype(np.int64)
        new = pos < 0
        if new.any() and not fresh:  # a given dictionary may hold labels this piece does not use
            used = np.zeros(len(labels), dtype=bool)
            used[indices] = True
            new &= used
        if new.any():
            if self.frozen:
                raise ValueError(
                    f"key column {self.name!r} has labels the first pass did not see (e.g. "
                    f"{labels[new][0]!r}): the table changed while it was being read"
                )
            add = labels[new].unique()
            self.index = add if self.index is None else self.index.append(add)
            pos = self.index.get_indexer(labels).astype(np.int64)
        return pos[indices]

    def freeze(self) -> np.ndarray:
        """Sort the labels; return ``order`` (sorted position -> first-appearance code)."""
        if self.index is None:
            raise ValueError(f"the table has no rows, so key column {self.name!r} has no labels")
        try:
            order = np.asarray(self.index.argsort(), dtype=np.int64)
        except TypeError as err:
            kinds = sorted({type(v).__name__ for v in self.index[:1000]})
            raise ValueError(
                f"key column {self.name!r} mixes label types ({', '.join(kinds)}), which cannot be "
                "sorted; cast it to one type (e.g. table[col].astype(str))"
            ) from err
        self.index = self.index[order]
        self.frozen = True
        return order


def _numeric_ok(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_null(t)
    )


def _non_numeric(name: str, what: str, dims: Sequence[str]) -> ValueError:
    return ValueError(
        f"value column {name!r} is {what}, not numeric, so it cannot be a covariate as it is. Encode "
        f"it: as fixed effects (fit(..., fe=...)), or as 0/1 dummy columns "
        f"(pd.get_dummies(table, columns=[{name!r}], drop_first=True, dtype=float)); if it names the "
        f"cells, add it to dims= (now {list(dims)}); or leave it out with values=[...]. Booleans are "
        "read as 0/1."
    )


def _check_pandas_dtypes(dtypes: dict, values: Sequence[str], dims: Sequence[str]) -> None:
    for v in values:
        dt = dtypes[v]
        if pd.api.types.is_bool_dtype(dt) or (
            pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_complex_dtype(dt)
        ):
            continue
        raise _non_numeric(v, f"of dtype {dt}", dims)


def _check_arrow_types(schema: pa.Schema, values: Sequence[str], dims: Sequence[str]) -> None:
    for v in values:
        t = schema.field(v).type
        if not _numeric_ok(t):
            raise _non_numeric(v, f"of type {t}", dims)


def _column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(name)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    return np.asarray(col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)


def _flat(codes: Sequence[np.ndarray], shape: Sequence[int], n: int) -> np.ndarray:
    """Row-major flat index of ``codes`` in a grid of ``shape`` (zeros for a 0-d grid)."""
    if not len(codes):
        return np.zeros(n, dtype=np.int64)
    idx = codes[0].astype(np.int64, copy=True)
    for c, m in zip(codes[1:], shape[1:], strict=True):
        idx *= m
        idx += c
    return idx


# --------------------------------------------------------------------------------------------
# pass 1: on which dims does each column vary?
# --------------------------------------------------------------------------------------------


class _Columns(dict):
    """A piece's value columns as float64, converted when first asked for; ``("key", a, b)``
    is the codes of dim ``b`` (to find nested dims)."""

    def __init__(self, batch: pa.RecordBatch, codes: Sequence[np.ndarray]):
        super().__init__()
        self.batch, self.codes = batch, codes

    def __missing__(self, key):
        if isinstance(key, tuple):
            out = self.codes[key[2]].astype(np.float64)
        else:
            out = _column(self.batch, key)
        self[key] = out
        return out


class _Detector:
    """For each column and proper subset ``S`` of the dims: is the column constant within the
    groups of ``S``? Exact, over all rows, piece by piece, in memory of the sub-grids."""

    def __init__(self, ndim: int, names: Sequence, full: set):
        self.ndim = ndim
        subsets = [s for r in range(ndim) for s in combinations(range(ndim), r)]
        self.alive: dict = {v: set(subsets) for v in names if v not in full}
        for a in range(ndim):  # nesting of the keys: does dim a determine dim b?
            for b in range(ndim):
                if a != b:
                    self.alive[("key", a, b)] = {(a,)}
        self.caps = [0] * ndim
        self.seen: dict[tuple, np.ndarray] = {}
        self.ref: dict[tuple, np.ndarray] = {}

    def _grow(self, sizes: Sequence[int]) -> None:
        grow = {a: max(n, int(self.caps[a] * 1.5) + 8) for a, n in enumerate(sizes) if n > self.caps[a]}
        if not grow:
            return
        old = list(self.caps)
        for a, n in grow.items():
            self.caps[a] = n
        for store, fill in ((self.seen, False), (self.ref, np.nan)):
            for key, arr in store.items():
                s = key if store is self.seen else key[1]
                pad = [(0, self.caps[a] - old[a]) for a in s]
                if any(p[1] for p in pad):
                    store[key] = np.pad(arr, pad, constant_values=fill)

    def _kill(self, v, s: tuple) -> None:
        dead = {t for t in self.alive[v] if set(t) <= set(s)}
        self.alive[v] -= dead
        for t in dead:
            self.ref.pop((v, t), None)

    def update(self, codes: Sequence[np.ndarray], values: dict, sizes: Sequence[int], n: int) -> None:
        self._grow(sizes)
        live: dict[tuple, list] = {}
        for v, subs in self.alive.items():
            for s in subs:
                live.setdefault(s, []).append(v)
        for s in sorted(live, key=len, reverse=True):
            names = [v for v in live[s] if s in self.alive[v]]
            if not names:
                continue
            shape = tuple(self.caps[a] for a in s)
            idx = _flat([codes[a] for a in s], shape, n)
            if s not in self.seen:  # first piece only: later no subset comes back to life
                self.seen[s] = np.zeros(shape, dtype=bool)
            seen = self.seen[s].reshape(-1)
            new = ~seen[idx]
            fresh = idx[new]
            seen[fresh] = True
            for v in names:  # one column at a time, so a dead column's array is freed at once
                if (v, s) not in self.ref:
                    self.ref[(v, s)] = np.full(shape, np.nan)
                ref = self.ref[(v, s)].reshape(-1)
                x = values[v]
                ref[fresh] = x[new]
                r = ref[idx]
                d = np.flatnonzero(x != r)
                if d.size and not (np.isnan(x[d]) & np.isnan(r[d])).all():
                    self._kill(v, s)
        used = {s for subs in self.alive.values() for s in subs}
        for s in [s for s in self.seen if s not in used]:
            del self.seen[s]

    def placement(self, v) -> tuple[int, ...]:
        subs = self.alive.get(v)
        if not subs:
            return tuple(range(self.ndim))
        return min(subs, key=lambda s: (len(s), s))

    def nested(self) -> list[tuple[int, int]]:
        """Pairs ``(a, b)`` of dims where each label of ``a`` comes with one label of ``b``."""
        return [(k[1], k[2]) for k, subs in self.alive.items() if isinstance(k, tuple) and subs]

    def values_on(self, v, s: tuple, sizes: Sequence[int], orders: Sequence[np.ndarray]) -> np.ndarray:
        arr = self.ref[(v, s)][tuple(slice(0, sizes[a]) for a in s)]
        for axis, a in enumerate(s):
            arr = arr.take(orders[a], axis=axis)
        return arr


# --------------------------------------------------------------------------------------------
# pass 2: place the full-grid columns
# --------------------------------------------------------------------------------------------


class DuplicateCells(ValueError):
    """Two or more rows of the long table name the same cell."""


def _show(label) -> str:
    if isinstance(label, pd.Timestamp):
        return repr(str(label.date()) if label == label.normalize() else str(label))
    return repr(label.item() if isinstance(label, np.generic) else label)


def _duplicates_error(flat: np.ndarray, shape, coders, dims, where: str) -> DuplicateCells:
    cells = np.unravel_index(flat[:5], shape)
    shown = "; ".join(
        "("
        + ", ".join(f"{d}={_show(c.index[int(k[i])])}" for d, c, k in zip(dims, coders, cells, strict=True))
        + ")"
        for i in range(len(flat[:5]))
    )
    return DuplicateCells(
        f"duplicate keys: {len(flat)}{'+' if where else ''} row(s) name a cell that another row already "
        f"names{where}, e.g. {shown}. Each cell of the {' x '.join(dims)} grid may appear once: "
        f"aggregate the rows first (table.groupby({list(dims)}, as_index=False).sum()), or add the "
        "column that tells them apart to dims="
    )


def _repeats(sorted_idx: np.ndarray) -> np.ndarray:
    return np.unique(sorted_idx[1:][sorted_idx[1:] == sorted_idx[:-1]])


class _MemorySink:
    """Full-grid columns as numpy arrays."""

    def __init__(self, shape, names, dtype, coders, dims):
        self.shape, self.names, self.coders, self.dims = tuple(shape), list(names), coders, dims
        self.arrays = {v: np.full(self.shape, np.nan, dtype=dtype) for v in names}
        self.written = np.zeros(int(np.prod(self.shape)), dtype=bool)

    def add(self, codes, values, n):
        idx = _flat(codes, self.shape, n)
        again = idx[self.written[idx]]
        dup = _repeats(np.sort(idx))
        if again.size or dup.size:
            bad = np.unique(np.concatenate([again, dup]))
            raise _duplicates_error(bad, self.shape, self.coders, self.dims, "")
        self.written[idx] = True
        for v in self.names:
            self.arrays[v].reshape(-1)[idx] = values[v]


class _ChunkSink:
    """Full-grid columns bucketed by chunk of the store, spilled to disk beyond ``budget`` bytes."""

    def __init__(self, shape, chunk, names, dtype, coders, dims, budget: int, spill_dir=None):
        self.shape, self.chunk, self.names = tuple(shape), tuple(chunk), list(names)
        self.dtype, self.coders, self.dims, self.budget = np.dtype(dtype), coders, dims, budget
        self.nchunks = tuple(math.ceil(n / c) for n, c in zip(shape, chunk, strict=True))
        self.cells = int(np.prod(self.chunk))
        self.off_dtype = np.int32 if self.cells < 2**31 else np.int64
        self.pending: dict[int, list] = {}
        self.pending_bytes = 0
        self.spilled: set[int] = set()
        self.tmp = tempfile.mkdtemp(prefix="daskglm-ingest-", dir=spill_dir)
        self.spill_bytes = 0

    def _path(self, cid: int) -> str:
        return os.path.join(self.tmp, f"{cid}.bin")

    def add(self, codes, values, n):
        cid = _flat([c // k for c, k in zip(codes, self.chunk, strict=True)], self.nchunks, n)
        off = _flat([c % k for c, k in zip(codes, self.chunk, strict=True)], self.chunk, n).astype(
            self.off_dtype
        )
        vals = np.empty((len(self.names), n), dtype=self.dtype)
        for i, v in enumerate(self.names):
            vals[i] = values[v]
        if len(self.nchunks) and np.prod(self.nchunks) <= 1 << 16:
            cid = cid.astype(np.uint16)  # radix sort
        order = np.argsort(cid, kind="stable")
        cs = cid[order]
        off = off[order]
        vals = vals[:, order]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            part = (off[s:e], vals[:, s:e])
            self.pending.setdefault(int(cs[s]), []).append(part)
            self.pending_bytes += part[0].nbytes + part[1].nbytes
        if self.pending_bytes > self.budget:
            self._spill()

    def _spill(self):
        for cid, parts in self.pending.items():
            with open(self._path(cid), "ab") as f:
                for off, vals in parts:
                    np.array([len(off)], dtype=np.int64).tofile(f)
                    off.tofile(f)
                    vals.tofile(f)
                    self.spill_bytes += off.nbytes + vals.nbytes
            self.spilled.add(cid)
        self.pending.clear()
        self.pending_bytes = 0

    def _read(self, cid: int) -> list:
        parts = []
        if cid in self.spilled:
            k = len(self.names)
            with open(self._path(cid), "rb") as f:
                while head := f.read(8):
                    m = int(np.frombuffer(head, dtype=np.int64)[0])
                    off = np.fromfile(f, dtype=self.off_dtype, count=m)
                    vals = np.fromfile(f, dtype=self.dtype, count=m * k).reshape(k, m)
                    parts.append((off, vals))
            os.remove(self._path(cid))
        return parts + self.pending.pop(cid, [])

    def chunk_ids(self) -> list[int]:
        return sorted(self.spilled | set(self.pending))

    def assemble(self, cid: int) -> tuple[tuple[slice, ...], np.ndarray]:
        """The region of chunk ``cid`` and its block ``(k,) + region shape``, NaN where no row."""
        parts = self._read(cid)
        off = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, self.off_dtype)
        vals = np.concatenate([p[1] for p in parts], axis=1) if parts else np.zeros((len(self.names), 0))
        dup = _repeats(np.sort(off))
        pos = np.unravel_index(cid, self.nchunks)
        start = [int(p) * c for p, c in zip(pos, self.chunk, strict=True)]
        if dup.size:
            local = np.unravel_index(dup, self.chunk)
            flat = np.ravel_multi_index([lc + s for lc, s in zip(local, start, strict=True)], self.shape)
            raise _duplicates_error(flat, self.shape, self.coders, self.dims, "")
        block = np.full((len(self.names), self.cells), np.nan, dtype=self.dtype)
        block[:, off] = vals
        block = block.reshape((len(self.names),) + self.chunk)
        region = tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, self.chunk, self.shape, strict=True))
        block = block[(slice(None),) + tuple(slice(0, r.stop - r.start) for r in region)]
        return region, block

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# from_long
# --------------------------------------------------------------------------------------------


def _chunk_shape(sizes: dict[str, int], chunks) -> tuple[int, ...]:
    dims = list(sizes)
    if isinstance(chunks, dict):
        bad = [d for d in chunks if d not in sizes]
        if bad:
            raise ValueError(f"chunks= names {bad[0]!r}, which is not one of the dims {dims}")
        out = []
        for d in dims:
            c = chunks.get(d, -1)
            c = sizes[d] if c in (-1, None) else int(c)
            if c < 1:
                raise ValueError(f"chunks[{d!r}]={c} must be >= 1 (or -1 for the whole dim)")
            out.append(min(c, sizes[d]))
        return tuple(out)
    target = CHUNK_CELLS if chunks is None else int(chunks)
    if target < 1:
        raise ValueError(f"chunks={chunks!r}: give a number of cells >= 1 or a dict of lengths per dim")
    out = [1] * len(dims)
    room = target
    for i in reversed(range(len(dims))):  # keep trailing dims whole, split the leading ones
        n = sizes[dims[i]]
        out[i] = max(1, min(n, room))
        room = max(1, room // out[i])
    return tuple(out)


def _closest(name: str, options: Sequence[str]) -> str:
    hit = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {hit[0]!r}?)" if hit else ""


def _check_args(source: _Source, dims, values, full) -> tuple[list[str], list[str], list[str]]:
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
                f"dims: {d!r} is not a column of {source.describe}{_closest(d, cols)}; its columns are {cols}"
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
                f"{v!r} is not a column of {source.describe}{_closest(v, cols)}; its columns are {cols}"
            )
    values += [f for f in full if f not in values]
    return dims, values, full


def _progress(show: bool | None, total, desc: str, unit: str = "rows"):
    from tqdm.auto import tqdm

    if show is None:
        show = bool(getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, disable=not show, file=sys.stderr, leave=False
    )


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

    Returns
    -------
    xarray.Dataset
        ``ds[v].attrs["long_table_dims"]`` lists the dims each value column was placed on;
        ``ds.attrs["from_long"]`` is the one-line report (also logged on the ``daskglm``
        logger), ``ds.attrs["fill_rate"]`` the share of grid cells with a row.

    Raises
    ------
    ValueError
        A dim that is not a column, a key with missing values, a non-numeric value column,
        or duplicate keys (the message shows some).
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
    source = _open_source(table, storage_options, int(piece_rows), keys)
    dims, values, full = _check_args(source, dims, values, y)
    if source.pandas_dtypes is not None:
        _check_pandas_dtypes(source.pandas_dtypes, values, dims)
    nd = len(dims)
    coders = [_Coder(d) for d in dims]
    detector = _Detector(nd, values, set(full))

    # pass 1: labels and where each column lives
    n_rows = 0
    bar = _progress(progress, source.n_rows, "daskglm scan 1/2")
    try:
        for batch in source.batches(dims + values):
            if n_rows == 0:
                _check_arrow_types(batch.schema, values, dims)
            n = batch.num_rows
            if n == 0:
                continue
            codes = [c.encode(batch.column(d), n_rows) for c, d in zip(coders, dims, strict=True)]
            vals = _Columns(batch, codes)
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
            arr = detector.values_on(v, s, sizes, orders).astype(dtype)
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
        return {"long_table_dims": [dims[a] for a in placed[v]]}

    ds_attrs = {"from_long": report, "fill_rate": fill, "n_rows": n_rows}
    clock = {"scan": time.perf_counter() - t0}

    # pass 2: the full-grid columns
    def place(sink):
        frozen = coders
        done = 0
        bar = _progress(progress, n_rows, "daskglm place 2/2")
        try:
            for batch in source.batches(dims + on_grid):
                n = batch.num_rows
                if n == 0:
                    continue
                codes = [c.encode(batch.column(d), done) for c, d in zip(frozen, dims, strict=True)]
                sink.add(codes, {v: _column(batch, v) for v in on_grid}, n)
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
        sink = _MemorySink(sizes, on_grid, dtype, coders, dims)
        place(sink)
        ds = xr.Dataset(coords=coords, attrs=ds_attrs)
        for v in values:
            if v in small:
                ds[v] = xr.Variable(small[v][0], small[v][1], attrs=attrs_of(v))
            else:
                ds[v] = xr.Variable(tuple(dims), sink.arrays[v], attrs=attrs_of(v))
        ds = ds[values]
    else:
        chunk = _chunk_shape(dict(zip(dims, sizes, strict=True)), chunks)
        ds = _write_store(
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
        raise ValueError(f"{option}={codec!r} is not a codec{_closest(name, CODECS)}: choose {choices}")
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


def _write_store(
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
    sink = _ChunkSink(sizes, chunk, on_grid, dtype, coders, dims, int(memory), spill_dir)
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
        bar = _progress(progress, len(ids), "daskglm write chunks", unit="chunks")
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
