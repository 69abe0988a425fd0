"""The two passes of :func:`daskglm.frontend.tables.from_long` over a long table's pieces: on which
dims each column varies (pass 1), and placing the full-grid columns into the grid's chunks, in
memory or through per-chunk buckets and spill files (pass 2)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
import pyarrow as pa

from .table_sources import flat_index, read_column

__all__ = [
    "CHUNK_CELLS",
    "PieceColumns",
    "SubsetDetector",
    "DuplicateCells",
    "MemorySink",
    "ChunkSink",
    "chunk_shape",
]

#: default number of cells in one chunk of a store written by ``from_long(..., to=...)``
CHUNK_CELLS = 1 << 19


class PieceColumns(dict):
    """A piece's value columns as float64, converted when first asked for; ``("key", a, b)``
    is the codes of dim ``b`` (to find nested dims). ``readers`` maps a column to its own
    conversion (a categorical column's codes, :class:`~.table_sources.CategoryCoder`)."""

    def __init__(self, batch: pa.RecordBatch, codes: Sequence[np.ndarray], readers: dict | None = None):
        super().__init__()
        self.batch, self.codes, self.readers = batch, codes, readers or {}

    def __missing__(self, key):
        if isinstance(key, tuple):
            out = self.codes[key[2]].astype(np.float64)
        elif key in self.readers:
            out = self.readers[key](self.batch.column(key))
        else:
            out = read_column(self.batch, key)
        self[key] = out
        return out


class SubsetDetector:
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
            idx = flat_index([codes[a] for a in s], shape, n)
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


class MemorySink:
    """Full-grid columns as numpy arrays."""

    def __init__(self, shape, names, dtype, coders, dims):
        self.shape, self.names, self.coders, self.dims = tuple(shape), list(names), coders, dims
        self.arrays = {v: np.full(self.shape, np.nan, dtype=dtype) for v in names}
        self.written = np.zeros(int(np.prod(self.shape)), dtype=bool)

    def add(self, codes, values, n):
        idx = flat_index(codes, self.shape, n)
        again = idx[self.written[idx]]
        dup = _repeats(np.sort(idx))
        if again.size or dup.size:
            bad = np.unique(np.concatenate([again, dup]))
            raise _duplicates_error(bad, self.shape, self.coders, self.dims, "")
        self.written[idx] = True
        for v in self.names:
            self.arrays[v].reshape(-1)[idx] = values[v]


class ChunkSink:
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
        cid = flat_index([c // k for c, k in zip(codes, self.chunk, strict=True)], self.nchunks, n)
        off = flat_index([c % k for c, k in zip(codes, self.chunk, strict=True)], self.chunk, n).astype(
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


def chunk_shape(sizes: dict[str, int], chunks) -> tuple[int, ...]:
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
