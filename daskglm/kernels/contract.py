"""Contractions of cell arrays with the covariate blocks of one chunk (numpy only).

The design matrix of a chunk is never formed. Each block holds its columns on its own grid
(``(p_b,) +`` the chunk's shape with size 1 off the block's axes); the contractions reduce a
cell array onto the axes a block (or a pair of blocks) spans first, and only then multiply
by the small block arrays:

* :meth:`BlockContractor.vector`: ``X' v`` (gradients);
* :meth:`BlockContractor.matrix`: ``X' diag(c) X`` (Hessians, Gram and meat matrices);
* :meth:`BlockContractor.cluster_vector`: ``X' v`` per cluster (cluster-robust scores);
* :meth:`BlockContractor.linear`: ``X beta`` (the linear predictor).

Sums over grid axes go through BLAS (a product with a vector of ones) rather than
``ndarray.sum``, which is two to three times slower over short or strided axes; products of
two blocks that each have axes of their own are batched GEMMs over their shared axes.
"""

from __future__ import annotations

from functools import lru_cache, partial
from math import prod

import numpy as np

__all__ = ["BlockContractor", "sum_axes", "partial_sum"]

#: a pair of blocks with axes of their own goes through a batched GEMM when each of the
#: matrices ``c_U[s]`` it multiplies has at least this many cells; below that the per-matrix
#: overhead costs more than the elementwise route
MIN_BATCHED_CELLS = 64

#: long inner products ``P @ X.T`` are split into pieces of about this many cells (OpenBLAS
#: is slow on very skinny GEMMs; a batch of shorter ones is two to four times faster)
INNER_PIECE = 8192


@lru_cache(maxsize=256)
def _ones(n: int) -> np.ndarray:
    out = np.ones(n)
    out.flags.writeable = False
    return out


def sum_axes(src: np.ndarray, drop: tuple[int, ...]) -> np.ndarray:
    """``src.sum(axis=drop, keepdims=True)`` by products with vectors of ones (BLAS).

    Adjacent summed axes are merged into one, and so are adjacent kept ones, so each run of
    summed axes costs one matrix-vector product over a view of ``src``.
    """
    drop_set = set(drop)
    out_shape = tuple(1 if d in drop_set else s for d, s in enumerate(src.shape))
    groups: list[list] = []  # [size, summed?] runs of axes, size-1 axes skipped
    for d, s in enumerate(src.shape):
        if s == 1:
            continue
        summed = d in drop_set
        if groups and groups[-1][1] == summed:
            groups[-1][0] *= s
        else:
            groups.append([s, summed])
    if not any(g[1] for g in groups):
        return src.reshape(out_shape)
    arr = np.ascontiguousarray(src).reshape([g[0] for g in groups])
    for pos in reversed(range(len(groups))):
        size, summed = groups[pos]
        if not summed:
            continue
        before, after = prod(arr.shape[:pos]), prod(arr.shape[pos + 1 :])
        if after == 1:
            red = arr.reshape(before, size) @ _ones(size)
        else:
            red = np.matmul(_ones(size), arr.reshape(before, size, after))
        arr = red.reshape(arr.shape[:pos] + arr.shape[pos + 1 :])
    return arr.reshape(out_shape)


def partial_sum(cache: dict, keep: frozenset, lead: int = 0, total=None) -> np.ndarray:
    """Sum a cached cell array over the panel axes not in ``keep`` (keepdims).

    ``cache`` maps sets of panel axes to partial sums already made (initially the full-grid
    array under the set of all axes); the new sum starts from the smallest one that still
    has every axis of ``keep`` and is cached in turn. ``lead`` leading (feature) axes are
    kept. ``total(array, axes)`` sums (default :func:`sum_axes`, products with ones).
    """
    hit = cache.get(keep)
    if hit is not None:
        return hit
    src_key = min((k for k in cache if keep <= k), key=lambda k: cache[k].size)
    src = cache[src_key]
    drop = tuple(d + lead for d in sorted(src_key - keep) if src.shape[d + lead] != 1)
    out = (total or sum_axes)(src, drop) if drop else src
    cache[keep] = out
    return out


def _rank(order: list[int]) -> tuple[int, ...]:
    """The permutation that takes axes in sorted order to ``order``."""
    ranked = sorted(order)
    return tuple(ranked.index(d) for d in order)


def _inner(P: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``P @ X.T`` for two wide matrices ``(p, n)`` and ``(q, n)``, as a batch of shorter
    GEMMs when ``n`` is long."""
    n = P.shape[1]
    pieces = n // INNER_PIECE
    if pieces <= 1:
        return P @ X.T
    cut = pieces * (n // pieces)
    head = np.matmul(
        P[:, :cut].reshape(P.shape[0], pieces, -1).transpose(1, 0, 2),
        X[:, :cut].reshape(X.shape[0], pieces, -1).transpose(1, 2, 0),
    ).sum(axis=0)
    return head + P[:, cut:] @ X[:, cut:].T if cut < n else head


class _Blocks:
    """Block arrays in a list, some of them built on first use by ``builders[k]()``."""

    def __init__(self, arrays: list, builders: dict):
        self._arrays = list(arrays)
        self._builders = builders

    def __len__(self) -> int:
        return len(self._arrays)

    def __getitem__(self, k: int) -> np.ndarray:
        if self._arrays[k] is None:
            self._arrays[k] = self._builders[k]()
        return self._arrays[k]

    def built(self, k: int) -> np.ndarray | None:
        return self._arrays[k]


class _Flat:
    """Each block as a ``(p_b, cells)`` matrix, made on first use."""

    def __init__(self, blocks: _Blocks):
        self._blocks = blocks
        self._cache: dict[int, np.ndarray] = {}

    def __getitem__(self, k: int) -> np.ndarray:
        if k not in self._cache:
            x = self._blocks[k]
            self._cache[k] = x.reshape(x.shape[0], -1)
        return self._cache[k]


def _maximal(sets) -> list[frozenset]:
    """The sets not strictly inside another one of ``sets``."""
    sets = set(sets)
    return [s for s in sets if not any(s < t for t in sets)]


class BlockContractor:
    """Gradient- and Hessian-type contractions of cell arrays with the blocks of one chunk.

    Block arrays are stored *feature first*: shape ``(p_b,) + expanded chunk shape`` (size 1
    off the block's axes), so every column is a contiguous grid and the products, sums and
    BLAS calls run over long contiguous rows.

    A chunk is processed in slabs along one axis (:meth:`slab` gives the contractor of a
    slab, with views of the blocks). Only the work on the full grid is done slab by slab:
    what a pair of blocks needs on a smaller grid (``c`` reduced onto their axes) is
    accumulated over the slabs and contracted once per chunk (see :class:`Accumulator`).

    Parameters
    ----------
    X : list of ndarray or None
        One array per block as above, float64 and finite; ``None`` for a block that
        ``builders`` makes on first use.
    block_axes : list of tuple of int
        The panel axes each block varies along.
    shape : tuple of int
        The chunk's shape.
    sizes : list of int, optional
        Columns per block (needed when some blocks are built lazily).
    builders : dict, optional
        ``k -> builder`` for the lazy blocks: ``builder(index)`` returns block ``k``'s array
        for the cells ``index`` (a tuple of slices, one per panel axis). A slab's contractor
        then builds only the slab's part of a full-grid block, while it is in cache, instead
        of slicing a copy of the whole chunk's.
    """

    def __init__(
        self,
        X: list,
        block_axes,
        shape: tuple[int, ...],
        sizes: list[int] | None = None,
        builders: dict | None = None,
        _plan=None,
        _index: tuple[slice, ...] | None = None,
    ):
        self.shape = tuple(shape)
        self.ndim = len(shape)
        self._builders = builders or {}
        self._index = _index if _index is not None else tuple(slice(0, n) for n in self.shape)
        self.X = _Blocks(X, {k: partial(b, self._index) for k, b in self._builders.items()})
        self.axes = [frozenset(a) for a in block_axes]
        self.all = frozenset(range(self.ndim))
        self.sizes = list(sizes) if sizes is not None else [x.shape[0] for x in X]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n = int(self.offsets[-1])
        self.flat = _Flat(self.X)
        self.pairs = self._plan() if _plan is None else _plan
        #: the slab this contractor covers: (axis, start) in its parent chunk, or None
        self.origin: tuple[int, int] | None = None

    def slab(self, ax: int, start: int, stop: int) -> BlockContractor:
        """The contractor of the cells ``start:stop`` along axis ``ax``: views of the built
        blocks, lazy builders of the slab's part of the others."""
        idx = (slice(None),) * (ax + 1) + (slice(start, stop),)
        X = []
        for k, a in enumerate(self.axes):
            x = self.X.built(k)
            X.append(None if x is None else x[idx] if ax in a else x)
        shape = self.shape[:ax] + (stop - start,) + self.shape[ax + 1 :]
        base = self._index[ax].start
        index = self._index[:ax] + (slice(base + start, base + stop),) + self._index[ax + 1 :]
        builders = {k: b for k, b in self._builders.items() if X[k] is None}
        out = BlockContractor(X, self.axes, shape, self.sizes, builders, _plan=self.pairs, _index=index)
        out.origin = (ax, start)
        return out

    def reducer(self, arr: np.ndarray) -> dict:
        """A cache of partial sums of one cell array over the chunk's axes."""
        return {self.all: arr}

    # ---------------------------------------------------------------- linear predictor
    def linear_grids(self, beta: np.ndarray) -> list[np.ndarray]:
        """The parts of ``X beta`` from the blocks that do not span the full grid, each on
        the smallest grid that holds it: a block whose axes are inside another's is added on
        that block's grid (the i block on the (i, j) grid)."""
        parts: dict[frozenset, np.ndarray] = {}
        for k in sorted(range(len(self.X)), key=lambda k: -len(self.axes[k])):
            if self.axes[k] == self.all:
                continue
            grid = tuple(n if d in self.axes[k] else 1 for d, n in enumerate(self.shape))
            part = (beta[self.offsets[k] : self.offsets[k + 1]] @ self.flat[k]).reshape(grid)
            homes = [a for a in parts if self.axes[k] <= a]
            if homes:
                parts[min(homes, key=lambda a: parts[a].size)] += part
            else:
                parts[self.axes[k]] = part
        return sorted(parts.values(), key=lambda g: -g.size)

    def linear(self, beta: np.ndarray, base, grids: list[np.ndarray] | None = None) -> np.ndarray:
        """``X beta + base`` at every cell (``base``: a scalar or an array broadcasting to the
        chunk, such as the offset). ``grids`` are the chunk's :meth:`linear_grids` (made
        once per chunk and sliced here when this is a slab's contractor)."""
        if grids is None:
            grids = self.linear_grids(beta)
        elif self.origin is not None:
            grids = [self._slice(g) for g in grids]
        if np.ndim(base) or base:
            grids = grids + [np.asarray(base, dtype=np.float64)]
        eta = None
        for k, axes in enumerate(self.axes):
            if axes == self.all:
                part = (beta[self.offsets[k] : self.offsets[k + 1]] @ self.flat[k]).reshape(self.shape)
                if eta is None:
                    eta = part
                else:
                    eta += part
        if eta is None:
            eta = np.zeros(self.shape)
        for g in grids:
            eta += g
        return eta

    def _slice(self, arr: np.ndarray, lead: int = 0) -> np.ndarray:
        """The part of a chunk-level grid that this slab covers (a view; the grid itself
        when it does not vary along the slab axis)."""
        ax, start = self.origin
        if arr.shape[lead + ax] == 1:
            return arr
        idx = (slice(None),) * (lead + ax) + (slice(start, start + self.shape[ax]),)
        return arr[idx]

    # ---------------------------------------------------------------- contractions
    def accumulator(self, kind: str) -> Accumulator:
        """An :class:`Accumulator` of ``X' v`` (``kind="vector"``) or ``X' diag(c) X``
        (``"matrix"``) over the slabs of this chunk."""
        return Accumulator(self, kind)

    def vector(self, v: np.ndarray) -> np.ndarray:
        """``X' v`` for a cell array ``v``: the gradient-type contraction."""
        acc = self.accumulator("vector")
        acc.add(self, v)
        return acc.result()

    def matrix(self, c: np.ndarray) -> np.ndarray:
        """``X' diag(c) X`` for a cell array ``c``: the Hessian-type contraction.

        For a pair of blocks (a, b) with axes A and B, union U and shared axes S = A & B,
        ``c`` is first reduced onto U (cached partial sums). Then either

        * both blocks have axes of their own (A - B and B - A non-empty): one batched GEMM
          over S, ``X_a[s] @ c_U[s] @ X_b[s]'`` with ``c_U[s]`` an (A - B) x (B - A) matrix
          (e.g. (i, j) with (i, k): one ``(p x J) @ (J x K)`` product per i); or
        * one block's axes contain the other's: multiply ``c_U`` by the larger block's
          columns, reduce that onto the smaller block's axes and finish with one GEMM.
          These products and their partial sums are shared between pairs (the full-grid
          block's product reduced onto (i, j), then onto (i)).

        Pairs run from the largest grids to the smallest, so every partial sum starts from
        the smallest one already made.
        """
        acc = self.accumulator("matrix")
        acc.add(self, c)
        return acc.result()

    def _plan(self) -> list[tuple[int, int, bool]]:
        """The pairs of blocks ``(a, b, batched)``: ``a`` is the block multiplied by ``c``
        (or the left factor of the batched GEMM), largest grids first."""
        out = []
        nb = len(self.X)
        for a0 in range(nb):
            for b0 in range(a0, nb):
                a, b = self._order_pair(a0, b0)
                out.append((a, b, self._batched(a, b)))

        def size(pair):
            a, b, batched = pair
            union = self.axes[a] | self.axes[b]
            return (-len(union), -len(union if batched else self.axes[b]))

        return sorted(out, key=size)

    def _order_pair(self, a: int, b: int) -> tuple[int, int]:
        """Which block of a pair to multiply by ``c``: the one whose axes contain the
        other's (the full-grid block's product is shared by every pair), else the one with
        fewer columns."""
        if self.axes[b] > self.axes[a]:
            return b, a
        if self.axes[a] > self.axes[b]:
            return a, b
        return (a, b) if self.sizes[a] <= self.sizes[b] else (b, a)

    def _extent(self, k: int, axes) -> int:
        """Number of cells of block ``k``'s grid along ``axes`` (a subset of its axes)."""
        return prod(self.shape[d] for d in axes)

    def _batched(self, a: int, b: int) -> bool:
        own_a, own_b = self.axes[a] - self.axes[b], self.axes[b] - self.axes[a]
        if not (own_a and own_b):
            return False
        return self._extent(a, own_a) * self._extent(b, own_b) >= MIN_BATCHED_CELLS

    def batched_block(self, a: int, b: int, cu: np.ndarray) -> np.ndarray:
        """``sum_s X_a[s] @ c_U[s] @ X_b[s]'`` over the shared axes s, as a batched GEMM."""
        shared = sorted(self.axes[a] & self.axes[b])
        own_a = sorted(self.axes[a] - self.axes[b])
        own_b = sorted(self.axes[b] - self.axes[a])
        ns, na, nb = self._extent(a, shared), self._extent(a, own_a), self._extent(b, own_b)
        order = shared + own_a + own_b
        compact = cu.reshape([cu.shape[d] for d in sorted(order)])
        cu = compact.transpose(_rank(order)).reshape(ns, na, nb)  # a view when the axes allow
        xa = self._grouped(a, shared, own_a).reshape(-1, ns, na).transpose(1, 0, 2)  # (s, p_a, na)
        xb = self._grouped(b, shared, own_b).reshape(-1, ns, nb).transpose(1, 2, 0)  # (s, nb, p_b)
        pa, pb = xa.shape[1], xb.shape[2]
        if pa * nb * (na + pb) <= pb * na * (nb + pa):
            return np.matmul(np.matmul(xa, cu), xb).sum(axis=0)
        return np.matmul(xa, np.matmul(cu, xb)).sum(axis=0)

    def _grouped(self, k: int, first: list[int], then: list[int]) -> np.ndarray:
        """Block ``k``'s columns as ``(p_k,) + first axes + then axes`` (a small copy)."""
        compact = self.X[k].reshape([self.sizes[k]] + [self.X[k].shape[1 + d] for d in sorted(self.axes[k])])
        perm = (0,) + tuple(1 + r for r in _rank(first + then))
        return np.ascontiguousarray(compact.transpose(perm))

    def cluster_vector(self, v: np.ndarray, keep: tuple[int, ...]) -> np.ndarray:
        """Per-cluster ``X' v``: sums over every axis except ``keep``.

        Returns an array over the ``keep`` axes (compact) with a last axis of length P.
        """
        cache = self.reducer(v)
        kept = frozenset(keep)
        pieces = []
        for k, axes in enumerate(self.axes):
            r = partial_sum(cache, axes | kept)
            prod_k = {axes | kept: self.X[k] * r[None]}
            R = partial_sum(prod_k, kept, lead=1)  # (p_k,) + expanded, sizes off keep are 1
            compact = R.reshape([R.shape[0]] + [R.shape[d + 1] for d in keep])
            pieces.append(np.moveaxis(compact, 0, -1))
        return np.concatenate(pieces, axis=-1)


class Accumulator:
    """``X' v`` or ``X' diag(c) X`` summed over the slabs of one chunk.

    :meth:`add` does, for one slab, the work that needs the full grid: products with the
    blocks that span it, batched GEMMs of pairs whose axes together span it, and the
    reductions of the slab's array (and of its products) onto the largest smaller grids
    that some pair needs. Those reductions are accumulated on chunk-level grids (written
    into place when the grid spans the slab axis, added otherwise); :meth:`result` then
    contracts every remaining pair once, from the smallest accumulated grid that has its
    axes.

    Parameters
    ----------
    con : BlockContractor
        The chunk's contractor.
    kind : {"vector", "matrix"}
        ``X' v`` or ``X' diag(c) X``.
    """

    def __init__(self, con: BlockContractor, kind: str):
        if kind not in ("vector", "matrix"):
            raise ValueError(f"kind={kind!r}: use 'vector' or 'matrix'")
        self.con, self.kind = con, kind
        self.out = np.zeros(con.n) if kind == "vector" else np.zeros((con.n, con.n))
        full = con.all
        #: source -> the grids it is accumulated on; "c" is the slab's array itself, an int
        #: ``a`` the product of block ``a`` with it
        targets: dict[object, set] = {}
        if kind == "vector":
            targets["c"] = {con.axes[k] for k in range(len(con.X)) if con.axes[k] != full}
        else:
            for a, b, batched in con.pairs:
                union = con.axes[a] | con.axes[b]
                if union != full:
                    targets.setdefault("c", set()).add(union)
                elif not batched and con.axes[b] != full:
                    targets.setdefault(a, set()).add(con.axes[b])
        self.targets = {src: _maximal(sets) for src, sets in targets.items()}
        self.sums: dict[object, dict[frozenset, np.ndarray]] = {}
        for src, sets in self.targets.items():
            lead = () if src == "c" else (con.sizes[src],)
            self.sums[src] = {
                U: np.zeros(lead + tuple(n if d in U else 1 for d, n in enumerate(con.shape))) for U in sets
            }

    def add(self, slab: BlockContractor, arr: np.ndarray) -> None:
        """Add one slab (its contractor from :meth:`BlockContractor.slab`, or the chunk's own
        contractor for the whole chunk) with its cell array ``arr``."""
        con = self.con
        cache = slab.reducer(arr)
        if self.kind == "vector":
            for k in range(len(con.X)):
                if con.axes[k] == con.all:
                    self.out[con.offsets[k] : con.offsets[k + 1]] += slab.flat[k] @ arr.reshape(-1)
        else:
            products: dict[int, dict] = {}
            for a, b, batched in con.pairs:
                if con.axes[a] | con.axes[b] != con.all:
                    continue
                if batched:
                    block = slab.batched_block(a, b, arr)
                else:
                    if a not in products:
                        products[a] = {con.all: slab.X[a] * arr[None]}
                    if con.axes[b] != con.all:
                        continue  # reduced onto b's axes below, contracted in result()
                    block = _inner(products[a][con.all].reshape(slab.sizes[a], -1), slab.flat[b])
                self._put(a, b, block)
            for a, prod_cache in products.items():
                self._accumulate(slab, a, prod_cache, lead=1)
        if "c" in self.targets:
            self._accumulate(slab, "c", cache, lead=0)

    def _accumulate(self, slab: BlockContractor, src, cache: dict, lead: int) -> None:
        for U in sorted(self.targets.get(src, ()), key=len, reverse=True):
            red = partial_sum(cache, U, lead=lead)
            acc = self.sums[src][U]
            target = acc if slab.origin is None else slab._slice(acc, lead)  # a view: in place
            target += red

    def _put(self, a: int, b: int, block: np.ndarray) -> None:
        con = self.con
        sa = slice(con.offsets[a], con.offsets[a + 1])
        sb = slice(con.offsets[b], con.offsets[b + 1])
        self.out[sa, sb] += block
        if a != b:
            self.out[sb, sa] += block.T

    def result(self) -> np.ndarray:
        """The chunk's ``X' v`` or ``X' diag(c) X``, contracting what the slabs left."""
        con = self.con
        if self.kind == "vector":
            cache = dict(self.sums.get("c", {}))
            for k in sorted(range(len(con.X)), key=lambda k: -len(con.axes[k])):
                if con.axes[k] != con.all:
                    r = partial_sum(cache, con.axes[k])
                    self.out[con.offsets[k] : con.offsets[k + 1]] = con.flat[k] @ r.reshape(-1)
            return self.out
        cache_c = dict(self.sums.get("c", {}))
        products: dict[tuple[int, frozenset], dict] = {}
        for a, b, batched in con.pairs:
            union = con.axes[a] | con.axes[b]
            if union == con.all:
                if batched or con.axes[b] == con.all:
                    continue  # done slab by slab
                R = partial_sum(self.sums[a], con.axes[b], lead=1)
            else:
                cu = partial_sum(cache_c, union)
                if batched:
                    self._put(a, b, con.batched_block(a, b, cu))
                    continue
                key = (a, union)
                if key not in products:
                    products[key] = {union: con.X[a] * cu[None]}
                R = partial_sum(products[key], con.axes[b], lead=1)
            self._put(a, b, _inner(R.reshape(R.shape[0], -1), con.flat[b]))
        return self.out
