"""Long tables read piece by piece: sources (parquet, CSV, pandas, dask) and one piece's keys and
values (label codes, numeric checks, float64 columns). Used by :mod:`daskglm.frontend.tables`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = [
    "PIECE_ROWS",
    "Source",
    "open_source",
    "LevelCoder",
    "CategoryCoder",
    "is_numeric_type",
    "check_pandas_dtypes",
    "check_arrow_types",
    "read_column",
    "flat_index",
    "pandas_index_columns",
]


#: rows per piece when the table is read in slices (parquet row groups may set their own size)
PIECE_ROWS = 1 << 18

_PARQUET = (".parquet", ".pq", ".parq")
_CSV = (".csv", ".tsv")


@dataclass
class Source:
    """A table read piece by piece: ``batches(columns)`` can be called more than once."""

    describe: str
    columns: list[str]
    batches: Callable[[list[str]], Iterable[pa.RecordBatch]]
    n_rows: int | None
    pandas_dtypes: dict | None = None


def pandas_index_columns(schema: pa.Schema) -> set[str]:
    """The columns that hold an unnamed pandas index (``__index_level_0__``, ...) according to the
    pandas metadata pyarrow writes (``schema.pandas_metadata["index_columns"]``): pandas stores a
    DataFrame's non-default index as columns when it writes parquet. A *named* index (``rid``) is
    a column by that name, kept as any other; a ``RangeIndex`` is stored as metadata only."""
    try:
        meta = schema.pandas_metadata
    except Exception:  # malformed metadata: nothing to drop
        return set()
    if not meta:
        return set()
    index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    named = {c.get("field_name") for c in meta.get("columns", []) if c.get("name") is not None}
    return {c for c in index if c not in named and c in schema.names}


def _pandas_batches(df: pd.DataFrame, columns: list[str], piece_rows: int) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(df), piece_rows):
        piece = df.iloc[start : start + piece_rows][columns]
        yield from pa.Table.from_pandas(piece, preserve_index=False).combine_chunks().to_batches()


def _is_dask_dataframe(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "dask" and hasattr(obj, "npartitions")


def open_source(table, storage_options: dict | None, piece_rows: int, keys: Sequence[str]) -> Source:
    if isinstance(table, pd.DataFrame):
        return Source(
            "the DataFrame",
            [str(c) for c in table.columns],
            lambda cols: _pandas_batches(table, cols, piece_rows),
            len(table),
            dict(table.dtypes.items()),
        )
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if isinstance(table, pa.Table):
        hidden = pandas_index_columns(table.schema)
        return Source(
            "the pyarrow Table",
            [c for c in table.column_names if c not in hidden],
            lambda cols: table.select(cols).to_batches(max_chunksize=piece_rows),
            table.num_rows,
        )
    if _is_dask_dataframe(table):

        def parts(cols):
            for i in range(table.npartitions):
                yield from _pandas_batches(table.get_partition(i)[cols].compute(), cols, piece_rows)

        return Source(
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


def _file_source(paths, storage_options: dict | None, piece_rows: int, keys: Sequence[str]) -> Source:
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
        schema = parquet_file(files[0]).schema_arrow
        hidden = pandas_index_columns(schema)  # pandas' unnamed index: not a column of the table
        names = [c for c in schema.names if c not in hidden]
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
    return Source(where, names, batches, n_rows)


def _labels(dictionary: pa.Array) -> pd.Index:
    if pa.types.is_date(dictionary.type):
        dictionary = dictionary.cast(pa.timestamp("ms"))
    return pd.Index(dictionary.to_pandas())


def _positions(index: pd.Index | None, arr: pa.Array, skip_missing: bool) -> tuple:
    """``arr`` dictionary-encoded against the labels seen so far (``index``): ``(indices, labels,
    pos, new, fresh)``, each row's position in the piece's dictionary ``labels``, each label's
    position in ``index`` (-1 if unseen), the unseen labels this piece uses (missing ones left
    out with ``skip_missing``), and whether the dictionary was made here (a given one, a pandas
    categorical's, may hold labels the piece does not use)."""
    fresh = not pa.types.is_dictionary(arr.type)
    enc = arr.dictionary_encode() if fresh else arr
    labels = _labels(enc.dictionary)
    indices = enc.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if index is None or not len(index):
        pos = np.full(len(labels), -1, dtype=np.int64)
    else:
        pos = index.get_indexer(labels).astype(np.int64)
    new = pos < 0
    if skip_missing:
        new &= ~np.asarray(pd.isna(labels), dtype=bool)
    if new.any() and not fresh:
        used = np.zeros(len(labels), dtype=bool)
        used[indices] = True
        new &= used
    return indices, labels, pos, new, fresh


class LevelCoder:
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
        indices, labels, pos, new, _ = _positions(self.index, arr, skip_missing=False)
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


class CategoryCoder:
    """Codes of a categorical value column (strings, pandas categories, dates): float64 codes in
    order of first appearance, NaN where the value is missing, so that the passes treat the
    column as a number; :meth:`decode` turns codes back into the labels."""

    def __init__(self, name: str):
        self.name = name
        self.index = pd.Index([])
        #: the categories in their order when the column is a pandas categorical (arrow's
        #: dictionary type), as formulaic and pyfixest take them; ``None`` for plain labels
        self.categories: list | None = None
        self._first = True

    def encode(self, arr: pa.Array) -> np.ndarray:
        indices, labels, pos, new, fresh = _positions(self.index, arr, skip_missing=True)
        if self._first:
            self._first = False
            if not fresh:
                self.categories = [v.item() if isinstance(v, np.generic) else v for v in labels.dropna()]
        if new.any():
            add = labels[new].unique()
            self.index = add if not len(self.index) else self.index.append(add)
            pos = self.index.get_indexer(labels).astype(np.int64)
        codes = pos[indices].astype(np.float64) if len(pos) else np.zeros(len(arr))
        codes[codes < 0] = np.nan
        if arr.null_count:
            codes[arr.is_null().to_numpy(zero_copy_only=False)] = np.nan
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The labels at ``codes`` (any shape): float64 for numeric labels, else an object array;
        NaN where a code is NaN."""
        ok = ~np.isnan(codes)
        at = codes[ok].astype(np.int64)
        kind = self.index.dtype
        if pd.api.types.is_numeric_dtype(kind) and not pd.api.types.is_bool_dtype(kind):
            out = np.full(codes.shape, np.nan)
            out[ok] = self.index.to_numpy(dtype=np.float64)[at]
        else:
            out = np.full(codes.shape, np.nan, dtype=object)
            out[ok] = self.index.to_numpy(dtype=object)[at]
        return out


def is_numeric_type(t: pa.DataType) -> bool:
    """Whether an arrow column of type ``t`` is read as numbers (booleans as 0/1)."""
    return _numeric_ok(t)


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
        f"value column {name!r} is {what}, not numeric. If it holds numbers, some entries are not "
        "(a '.', '-' or 'n/a' for missing, a thousands separator): fix them, or read the file with "
        f"pandas marking them missing (pd.read_csv(path, na_values=['.'])) and pass the DataFrame. If "
        "it holds labels, it cannot enter the model as it is. Encode "
        f"it: in a formula as C({name}) (dummy columns), as fixed effects (fit(..., fe=...)), or as 0/1 "
        "dummy columns "
        f"(pd.get_dummies(table, columns=[{name!r}], drop_first=True, dtype=float)); if it names the "
        f"cells, add it to dims= (now {list(dims)}); or leave it out with values=[...]. Booleans are "
        "read as 0/1."
    )


def check_pandas_dtypes(
    dtypes: dict, values: Sequence[str], dims: Sequence[str], categorical: Sequence[str] = ()
) -> None:
    for v in values:
        if v in categorical:
            continue
        dt = dtypes[v]
        if pd.api.types.is_bool_dtype(dt) or (
            pd.api.types.is_numeric_dtype(dt) and not pd.api.types.is_complex_dtype(dt)
        ):
            continue
        raise _non_numeric(v, f"of dtype {dt}", dims)


def check_arrow_types(
    schema: pa.Schema, values: Sequence[str], dims: Sequence[str], categorical: Sequence[str] = ()
) -> None:
    for v in values:
        if v in categorical:
            continue
        t = schema.field(v).type
        if not _numeric_ok(t):
            raise _non_numeric(v, f"of type {t}", dims)


def read_column(batch: pa.RecordBatch, name: str) -> np.ndarray:
    col = batch.column(name)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    return np.asarray(col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)


def flat_index(codes: Sequence[np.ndarray], shape: Sequence[int], n: int) -> np.ndarray:
    """Row-major flat index of ``codes`` in a grid of ``shape`` (zeros for a 0-d grid)."""
    if not len(codes):
        return np.zeros(n, dtype=np.int64)
    idx = codes[0].astype(np.int64, copy=True)
    for c, m in zip(codes[1:], shape[1:], strict=True):
        idx *= m
        idx += c
    return idx
