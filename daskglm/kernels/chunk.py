"""Per-chunk numpy kernels: one chunk of the panel in, small packed statistics out.

A *chunk* is a hyper-rectangle of the full grid: the matching chunk of ``y`` and the matching
slices of every other input (covariates, offsets, weights, trials, event). From it the kernels
compute, in numpy only,

* eta, then the family's per-cell ``f``, ``g``, ``h`` (and NB2's log-alpha terms);
* the chunk's contribution to the log-likelihood, gradient ``X'wg`` and Hessian ``X'diag(wh)X``,
  reducing ``wg``/``wh`` onto the dims of each block (or pair of blocks) first and only then
  contracting with the small covariate arrays, so the N x P design is never formed;
* for the setup pass: counts for validation, weighted sums for starting values, the Gram matrix
  (collinearity), the log-likelihood constants.

Every sum is linear over cells, so the sum of the chunks' vectors is the panel's statistic.
Nothing here imports dask: the graph builder in :mod:`daskglm.graph.passes` maps these functions over
the chunks and tree-sums the results.
"""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np

from .contract import BlockContractor, partial_sum, sum_axes
from .families import Gaussian
from .layout import ArgSpec, Layout, StatPacker

__all__ = [
    "ChunkData",
    "setup_packer",
    "eval_packer",
    "setup_chunk",
    "setup_gram",
    "eval_chunk",
    "eval_kernel",
    "cluster_chunk",
    "finalize_eval",
    "predict_chunk",
]


def _expand(arr: np.ndarray, spec: ArgSpec, shape: tuple[int, ...]) -> np.ndarray:
    """View a chunk of an input with the chunk's full number of axes (size 1 where absent)."""
    arr = np.asarray(arr)
    m = len(shape)
    target = [1] * m
    for k, ax in enumerate(spec.axes):
        target[ax] = arr.shape[k]
    if spec.n_features is not None:
        target.append(arr.shape[-1])
    return arr.reshape(target)


def _compact(arr: np.ndarray, axes: tuple[int, ...], lead: int = 0) -> np.ndarray:
    """Drop the size-1 placeholder axes of an expanded array, keeping ``lead`` leading axes
    and ``axes`` (positions in ``arr``)."""
    return arr.reshape(list(arr.shape[:lead]) + [arr.shape[d] for d in axes])


class ChunkData:
    """One chunk's inputs, masked, sanitised and broadcast, ready for the family maths.

    Attributes
    ----------
    used : ndarray of bool
        Cells that enter the likelihood (finite ``y``, non-zero weight and, with
        ``missing="drop"``, finite inputs).
    candidate : ndarray of bool
        Cells with finite ``y`` and non-zero weight (before dropping non-finite inputs).
    w : ndarray
        The per-cell weight, 0 at unused cells.
    y : ndarray
        The response, with a harmless value at unused cells.
    offset : ndarray or float
        Sum of offsets and log exposures (0 at unused cells).
    aux : dict
        The family's auxiliary arrays (``trials``, ``event``), harmless at unused cells.
    """

    def __init__(
        self,
        layout: Layout,
        arrays: tuple[np.ndarray, ...],
        predict: bool = False,
        contractor: BlockContractor | None = None,
    ):
        self.layout = layout
        self.predict = predict
        fam = layout.family
        (iy,) = layout.role("y")
        y = np.asarray(arrays[iy], dtype=np.float64)
        self.shape = y.shape
        self.local = [_expand(a, s, self.shape) for a, s in zip(arrays, layout.args, strict=True)]
        cand = np.isfinite(y) if not predict else np.ones(y.shape, dtype=bool)
        iw = [] if predict else layout.role("weights")
        if iw:
            wraw = self.local[iw[0]].astype(np.float64, copy=False)
            cand &= wraw != 0
        self.candidate = cand
        used = cand
        if layout.missing == "drop":
            used = cand.copy()
            for k, spec in enumerate(layout.args):
                if spec.role != "y":
                    used &= self.finite(k)
        self.used = used
        self.all_used = bool(used.all())
        #: no weights and no masked cell: weighting is the identity (skipped in the hot path)
        self.unit_weights = not iw and self.all_used
        self._w = np.where(used, wraw, 0.0) if iw else None
        self.y = y if self.all_used else np.where(used, y, fam.safe_y)
        off = 0.0
        for k in layout.role("offset"):
            off = off + self.local[k].astype(np.float64, copy=False)
        for k in layout.role("exposure"):
            off = off + np.log(self.local[k].astype(np.float64, copy=False))
        masked_off = np.ndim(off) and not predict and not self.all_used
        self.offset = np.where(used, off, 0.0) if masked_off else off
        safe_aux = {"trials": 1.0, "event": 0.0}
        self.aux = {}
        for role in () if predict else fam.aux_roles:
            (k,) = layout.role(role)
            self.aux[role] = np.where(used, self.local[k].astype(np.float64, copy=False), safe_aux[role])
        self._contractor = contractor

    @property
    def w(self) -> np.ndarray:
        """The per-cell weight, 0 at unused cells (made on first use when it is the mask)."""
        if self._w is None:
            self._w = self.used.astype(np.float64)
        return self._w

    def weighted(self, a: np.ndarray) -> np.ndarray:
        """``w * a`` (``a`` itself when all weights are 1)."""
        return a if self.unit_weights else self.w * a

    def finite(self, k: int) -> np.ndarray:
        """Whether argument ``k`` is finite at each cell (all features), broadcastable."""
        a = self.local[k]
        ok = np.isfinite(a)
        if self.layout.args[k].n_features is not None:
            ok = ok.all(axis=-1)
        return ok

    @property
    def contractor(self) -> BlockContractor:
        """The contractor of this chunk's blocks (built on first use unless given)."""
        if self._contractor is None:
            self._contractor = build_contractor(self.layout, self.local, self.shape, self.predict)
        return self._contractor

    def eta(self, beta: np.ndarray, grids: list[np.ndarray] | None = None) -> np.ndarray:
        """Linear predictor at every cell (0 at unused cells); ``grids``: the chunk's
        :meth:`~daskglm.kernels.contract.BlockContractor.linear_grids`, when this is a slab."""
        eta = self.contractor.linear(beta, self.offset, grids)
        return eta if self.predict or self.all_used else np.where(self.used, eta, 0.0)


def build_contractor(layout: Layout, local: list, shape: tuple[int, ...], predict: bool = False):
    """The :class:`~daskglm.kernels.contract.BlockContractor` of a chunk from its expanded inputs.

    Blocks that span every panel axis are built lazily, slab by slab (see
    :class:`~daskglm.kernels.contract.BlockContractor`); the smaller ones at once.
    """
    X, builders = [], {}
    for k, block in enumerate(layout.blocks):
        if shape and len(block.axes) == len(shape) and not block.intercept:
            X.append(None)
            builders[k] = partial(_block_cells, layout, local, block, predict)
        else:
            X.append(_block_matrix(layout, local, shape, block, predict))
    sizes = [b.size for b in layout.blocks]
    return BlockContractor(X, [b.axes for b in layout.blocks], shape, sizes, builders)


def _block_cells(layout: Layout, local: list, block, predict: bool, index: tuple[slice, ...]) -> np.ndarray:
    """A block's array for the cells ``index`` (one slice per panel axis) of the chunk."""
    m = len(index)
    cut = list(local)
    for k in block.sources:
        a = local[k]
        cut[k] = a[tuple(s if a.shape[d] != 1 else slice(None) for d, s in enumerate(index))]
    shape = tuple(cut[block.sources[0]].shape[:m])  # the block spans every axis
    return _block_matrix(layout, cut, shape, block, predict)


def _block_matrix(layout: Layout, local: list, shape: tuple[int, ...], block, predict: bool) -> np.ndarray:
    """The block's columns, feature first: ``(p_b,) + expanded chunk shape``, float64."""
    m = len(shape)
    if block.intercept:
        return np.ones((1,) + (1,) * m)
    bshape = [shape[d] if d in block.axes else 1 for d in range(m)]
    X = np.empty([block.size] + bshape)
    col = 0
    for k in block.sources:
        spec = layout.args[k]
        a = local[k]
        if spec.n_features is None:
            X[col] = a
        else:
            X[col : col + spec.width] = np.moveaxis(a, -1, 0)
        col += spec.width
    if predict:
        return X
    if len(block.axes) < m or any(layout.args[k].sanitize for k in block.sources):
        X[~np.isfinite(X)] = 0.0
    return X


# -------------------------------------------------------------------------- setup pass
def setup_packer(layout: Layout) -> StatPacker:
    """Fields of the setup pass: counts, sums, constants and the Gram matrix."""
    p = StatPacker()
    for name in ("n_candidate", "n_used", "sw", "swy", "swy2", "swoff", "swyoff", "swd", "swm"):
        p.add(name)
    p.add("ll_const").add("ll_sat").add("neg_weights").add("inf_y")
    p.add("bad_used", (len(layout.args),)).add("bad_any", (len(layout.args),))
    p.add("nonpos_exposure", (len(layout.args),))
    p.add("domain", (max(1, len(layout.family.domain_rules())),))
    p.add("gram", (layout.n_beta, layout.n_beta))
    return p


def setup_chunk(layout: Layout, *arrays: np.ndarray, engine: str | None = None) -> np.ndarray:
    """The setup pass over one chunk (see :func:`setup_packer` for the fields).

    Under the numba ``engine`` (:func:`daskglm.kernels.engines.resolve_engine`) one compiled
    sweep (:func:`daskglm.kernels.chunk_numba.setup_chunk`) gives the counts, sums, constants,
    domain counts and the Gram matrix; the bad-input and exposure counts are taken here, and
    only for the inputs that hold a non-finite (or, for an exposure, a non-positive) value
    (:func:`_suspect_inputs`): the checks of an input off the full grid are on its own small
    array, the sweep counts the full-grid covariates' non-finite values as it packs them.
    Under numpy (and for layouts the sweep does not cover) the counts, sums and constants are
    taken slab by slab (:func:`_cell_slabs`: temporaries stay cache-sized) and the Gram
    ``X' diag(w) X`` by :func:`setup_gram`.
    """
    from .engines import resolve_engine

    shape = np.shape(arrays[layout.role("y")[0]])
    with np.errstate(all="ignore"):
        out = None
        if resolve_engine(engine) == "numba":
            from .chunk_numba import setup_chunk as compiled

            out = compiled(layout, *arrays)
        if out is None:
            out = _setup_sums(layout, arrays, shape)
            out["gram"] = setup_gram(layout, arrays, engine)
        else:
            suspect = _suspect_inputs(layout, arrays, out.pop("nonfinite"))
            out.update(_input_counts(layout, arrays, shape, suspect))
        vec = setup_packer(layout).pack(out)
    return vec.reshape((1,) * len(shape) + (-1,))


def _suspect_inputs(layout: Layout, arrays: tuple, swept: dict[int, int]) -> list[int]:
    """The inputs (other than ``y``) whose bad-input or exposure counts may be non-zero: a
    full-grid covariate the sweep found a non-finite value in (``swept``: its counts), any
    other input with a non-finite value in its own array, an exposure with a value not > 0."""
    out = []
    for k, spec in enumerate(layout.args):
        if spec.role == "y":
            continue
        if k in swept:
            bad = swept[k] > 0
        else:
            bad = not bool(np.isfinite(arrays[k]).all())
        if spec.role == "exposure":
            bad = bad or not bool((np.asarray(arrays[k]) > 0).all())
        if bad:
            out.append(k)
    return out


def _input_counts(layout: Layout, arrays: tuple, shape: tuple[int, ...], inputs) -> dict:
    """``bad_used``, ``bad_any`` and ``nonpos_exposure`` of :func:`setup_packer` for ``inputs``
    (0 for the others), slab by slab as :func:`_setup_sums`."""
    counts = _InputCounts(layout)
    if inputs:
        for cut, slab_arrays in _cell_slabs(layout, arrays, shape):
            counts.add(ChunkData(layout, slab_arrays), cut, inputs)
    return counts.result()


class _InputCounts:
    """The non-finite and non-positive-exposure counts of the inputs, slab by slab.

    An input's non-finite values are counted only where ``isfinite(...).all()`` fails on the
    slab; an input that does not span the slab axis is checked on the first slab only (the
    same cells every slab).
    """

    def __init__(self, layout: Layout):
        n = len(layout.args)
        self.layout = layout
        self.bad_used, self.bad_any, self.nonpos = np.zeros(n), np.zeros(n), np.zeros(n)
        self.seen: dict[tuple, bool] = {}  # (input, its cut) -> all finite there

    def add(self, d: ChunkData, cut: tuple, inputs) -> None:
        """Count one slab's cells (``cut``: its ``(axis, start)`` pairs) for ``inputs``."""
        for k in inputs:
            spec = self.layout.args[k]
            if spec.role == "y":
                continue
            # an input off some cut axis meets the same values in several slabs: count its
            # non-finite values (bad_any) the first time only
            key = (k,) + tuple(s for d_, s in cut if d_ in spec.axes)
            first = key not in self.seen
            if first:
                self.seen[key] = bool(np.isfinite(d.local[k]).all())
            if not self.seen[key]:
                nonfinite = ~d.finite(k)
                self.bad_used[k] += np.count_nonzero(np.broadcast_to(nonfinite, d.shape) & d.candidate)
                if first:
                    self.bad_any[k] += np.count_nonzero(nonfinite)
            if spec.role == "exposure" and not bool((d.local[k] > 0).all()):
                bad = np.broadcast_to(~(d.local[k] > 0), d.shape) & d.used
                self.nonpos[k] += np.count_nonzero(bad)

    def result(self) -> dict:
        return {"bad_used": self.bad_used, "bad_any": self.bad_any, "nonpos_exposure": self.nonpos}


def _onto(a: np.ndarray, like) -> np.ndarray:
    """``a`` (a slab's full shape) summed over the axes where ``like`` has length 1."""
    drop = tuple(d for d in range(a.ndim) if np.shape(like)[d] == 1 and a.shape[d] != 1)
    return sum_axes(a, drop) if drop else a


def _setup_sums(layout: Layout, arrays: tuple, shape: tuple[int, ...]) -> dict:
    """The setup pass's counts, weighted sums and constants, slab by slab (the input checks:
    :class:`_InputCounts`). With unit weights (no weights, every cell used) the sums skip the
    weighting.
    """
    fam = layout.family
    rules = fam.domain_rules()
    out: dict[str, object] = dict.fromkeys(
        ("n_candidate", "n_used", "sw", "swy", "swy2", "swoff", "swyoff", "swd", "swm", "ll_const"), 0.0
    )
    out["ll_sat"], out["neg_weights"], out["inf_y"] = 0.0, 0.0, 0.0
    counts = _InputCounts(layout)
    domain = np.zeros(max(1, len(rules)))
    weighted = bool(layout.role("weights"))
    (iy,) = layout.role("y")
    for cut, slab_arrays in _cell_slabs(layout, arrays, shape):
        d = ChunkData(layout, slab_arrays)
        cand, used, n = d.candidate, d.used, int(np.prod(d.shape))
        counts.add(d, cut, range(len(layout.args)))
        out["n_candidate"] += n if d.all_used else np.count_nonzero(cand)
        out["n_used"] += n if d.all_used else np.count_nonzero(used)
        if not d.all_used:  # an infinite y (not missing: an error unless missing="drop")
            inf_y = np.isinf(np.asarray(slab_arrays[iy], dtype=np.float64))
            if weighted:
                inf_y &= d.local[layout.role("weights")[0]] != 0
            out["inf_y"] += np.count_nonzero(inf_y)
        if weighted:
            out["neg_weights"] += np.count_nonzero((d.w < 0) & used)
        for q, r in enumerate(rules):
            bad = r.bad(d.y, d.aux)
            if np.any(bad):
                domain[q] += np.count_nonzero(np.broadcast_to(bad, d.shape) & used)
        for name, value in _weighted_sums(d).items():
            out[name] += value
    out.update(counts.result(), domain=domain)
    return out


def _cell_slabs(layout: Layout, arrays: tuple, shape: tuple[int, ...], cells: int | None = None):
    """Split a chunk's arguments into slabs of at most about ``cells`` cells.

    As :func:`_slabs`, but the axes before the slab axis are cut too (one position at a time),
    so a slab is cache-sized whatever the chunk's shape (:func:`_slabs` keeps them whole: a
    50 x 100 x 1000 chunk made slabs of 3.25e6 cells). Yields ``(cut, slab_arguments)`` with
    ``cut`` the ``(axis, start)`` of every axis cut; ``cells`` defaults to :data:`SLAB_CELLS`.
    """
    cells = SLAB_CELLS if cells is None else cells
    m = len(shape)
    if m == 0 or int(np.prod(shape)) <= cells:
        yield (), arrays
        return
    ax = next(a for a in range(m) if int(np.prod(shape[a + 1 :])) <= cells)
    step = max(cells // max(int(np.prod(shape[ax + 1 :])), 1), 1)
    for lead in itertools.product(*(range(shape[d]) for d in range(ax))):
        for start in range(0, shape[ax], step):
            where = {d: slice(i, i + 1) for d, i in enumerate(lead)}
            where[ax] = slice(start, start + step)
            out = []
            for a, spec in zip(arrays, layout.args, strict=True):
                idx = [where.get(d, slice(None)) for d in spec.axes]
                out.append(a[tuple(idx)] if idx else a)
            yield tuple((d, s.start) for d, s in where.items()), tuple(out)


def _weighted_sums(d: ChunkData) -> dict[str, float]:
    """One slab's ``sw``, ``swy``, ``swy2``, ``swoff``, ``swyoff``, ``swd``, ``swm``,
    ``ll_const`` and ``ll_sat`` (the offset's ``exp`` on its own grid). No BLAS dot products: a
    multithreaded ``ddot`` on a busy machine cost ~100 ns/cell."""
    fam, y = d.layout.family, np.ravel(d.y)
    unit = d.unit_weights
    w = None if unit else np.ravel(np.broadcast_to(d.w, d.shape))

    def wsum(v: np.ndarray) -> float:
        v = np.ravel(np.broadcast_to(v, d.shape))
        return float(v.sum() if unit else (w * v).sum())

    wy = y if unit else w * y
    out = {"sw": float(y.size if unit else w.sum()), "swy": float(wy.sum()), "swy2": float((wy * y).sum())}
    off = d.offset
    if np.ndim(off) == 0:
        out["swoff"] = out["sw"] * float(np.exp(off))
        out["swyoff"] = out["swy"] * float(np.exp(off))
    else:
        expoff = np.exp(off)
        if unit:  # every cell of the offset's grid stands for the same number of cells
            out["swoff"] = float(expoff.sum()) * (y.size // expoff.size)
        else:
            out["swoff"] = float((_onto(w.reshape(d.shape), expoff) * expoff).sum())
        out["swyoff"] = float((_onto(wy.reshape(d.shape), expoff) * expoff).sum())
    if "event" in d.aux:
        out["swd"] = wsum(d.aux["event"])
    if "trials" in d.aux:
        out["swm"] = wsum(d.aux["trials"])
    const, sat = fam.setup_terms(d.y, d.aux)
    out["ll_const"] = wsum(const)
    out["ll_sat"] = np.nan if sat is None else wsum(sat)
    return out


def setup_gram(layout: Layout, arrays: tuple, engine: str | None = None) -> np.ndarray:
    """``X' diag(w) X`` of one chunk (``w`` the weight, 0 at unused cells).

    Under the numba engine it is minus the Hessian of the same layout under a Gaussian family
    (``h = -1`` at every cell), computed by the compiled evaluation sweep
    (:func:`daskglm.kernels.chunk_numba.eval_chunk`) at any parameters; under the numpy engine the
    numpy accumulator, slab by slab as in :func:`eval_chunk` (the whole chunk at once ran 7x
    slower: the batched products of pairs of smaller blocks over a large grid).
    """
    from .engines import resolve_engine

    if resolve_engine(engine) == "numba":
        from .chunk_numba import eval_chunk as compiled

        gauss = layout.with_family(_GAUSSIAN)
        vec = compiled(gauss, np.zeros(gauss.n_params), True, False, *arrays)
        return -eval_packer(gauss, hessian=True).unpack(np.ravel(vec))["hess"]
    shape = np.shape(arrays[layout.role("y")[0]])
    with np.errstate(all="ignore"):
        local = [_expand(a, s, shape) for a, s in zip(arrays, layout.args, strict=True)]
        con = build_contractor(layout, local, shape)
        acc = con.accumulator("matrix")
        for (ax, start, stop), slab_arrays in _slabs(layout, arrays, shape):
            part = con if ax is None else con.slab(ax, start, stop)
            slab = ChunkData(layout, slab_arrays, contractor=part)
            acc.add(part, np.ascontiguousarray(np.broadcast_to(slab.w, slab.shape)))
        return acc.result()


#: the family whose Hessian is ``-X' diag(w) X`` (:func:`setup_gram`)
_GAUSSIAN = Gaussian()


# -------------------------------------------------------------------------- evaluation pass
def eval_packer(
    layout: Layout, *, hessian: bool = True, final: bool = False, meat: bool = True
) -> StatPacker:
    """Fields of an evaluation pass at given parameters.

    ``ll``, ``grad`` always; ``hess`` unless ``hessian=False``; with ``final=True`` also the
    deviance, the separation count and (with the Hessian, unless ``meat=False``: only robust
    standard errors read it) the HC0 meat ``sum w s s'`` of the per-cell scores.
    """
    P = layout.n_params
    p = StatPacker().add("ll").add("grad", (P,))
    if hessian:
        p.add("hess", (P, P))
    p.add("dev")
    if final and hessian and meat:
        p.add("meat", (P, P))
    if final:
        p.add("n_separated")
    return p


def eval_chunk(
    layout: Layout, params: np.ndarray, hessian: bool, final: bool, *arrays: np.ndarray, meat: bool = True
) -> np.ndarray:
    """Log-likelihood, gradient and (optionally) Hessian of one chunk at ``params``
    (:func:`eval_packer` for the fields; ``meat`` as there).

    The chunk is processed in cache-sized slabs (the statistics are sums over cells). The
    blocks and the parts of eta off the full grid are made once per chunk, and so are the
    contractions on grids smaller than the full one (see
    :class:`~daskglm.kernels.contract.Accumulator`).
    """
    fam = layout.family
    nb, extra = layout.n_beta, fam.n_extra > 0
    beta, theta = params[:nb], params[nb:]
    shape = np.shape(arrays[layout.role("y")[0]])
    with np.errstate(all="ignore"):
        local = [_expand(a, s, shape) for a, s in zip(arrays, layout.args, strict=True)]
        con = build_contractor(layout, local, shape)
        grids = con.linear_grids(beta)
        acc = {"grad": con.accumulator("vector")}
        if hessian:
            acc["hess"] = con.accumulator("matrix")
            if extra:
                acc["hess_bt"] = con.accumulator("vector")
        meat = meat and final and hessian
        if meat:
            acc["meat"] = con.accumulator("matrix")
            if extra:
                acc["meat_bt"] = con.accumulator("vector")
        sums = dict.fromkeys(("ll", "f_t", "f_tt", "dev", "meat_tt", "n_separated"), 0.0)
        for (ax, start, stop), slab_arrays in _slabs(layout, arrays, shape):
            part = con if ax is None else con.slab(ax, start, stop)
            d = ChunkData(layout, slab_arrays, contractor=part)
            eta = d.eta(beta, grids)
            der = fam.derivatives(d.y, eta, d.aux, theta)
            sums["ll"] += d.weighted(der.f).sum()
            wg = d.weighted(der.g)
            acc["grad"].add(part, wg)
            if extra:
                sums["f_t"] += d.weighted(der.f_t).sum()
            if hessian:
                acc["hess"].add(part, d.weighted(der.h))
                if extra:
                    acc["hess_bt"].add(part, d.weighted(der.f_et))
                    sums["f_tt"] += d.weighted(der.f_tt).sum()
            if final or extra:  # NB2's saturated likelihood moves with alpha: track it each pass
                sums["dev"] += d.weighted(fam.unit_deviance(d.y, eta, d.aux, theta)).sum()
            if meat:
                acc["meat"].add(part, wg * der.g)
                if extra:
                    acc["meat_bt"].add(part, d.weighted(der.g * der.f_t))
                    sums["meat_tt"] += d.weighted(der.f_t**2).sum()
            if final:
                sep = fam.separated(d.y, eta, d.aux)
                sums["n_separated"] += 0 if sep is None else np.count_nonzero(sep & d.used)
        out: dict[str, object] = {"ll": sums["ll"], "dev": sums["dev"], "n_separated": sums["n_separated"]}
        grad = acc["grad"].result()
        out["grad"] = np.concatenate([grad, [sums["f_t"]]]) if extra else grad
        P = layout.n_params
        if hessian:
            out["hess"] = _quadratic(acc["hess"], acc.get("hess_bt"), sums["f_tt"], nb, P)
        if meat:
            out["meat"] = _quadratic(acc["meat"], acc.get("meat_bt"), sums["meat_tt"], nb, P)
        vec = eval_packer(layout, hessian=hessian, final=final, meat=meat).pack(out)
    return vec.reshape((1,) * len(shape) + (-1,))


def eval_kernel(engine: str | None = None):
    """The evaluation kernel of ``engine`` (:func:`daskglm.kernels.engines.resolve_engine`): this
    module's :func:`eval_chunk` for ``"numpy"``, the compiled sweep of
    :mod:`daskglm.kernels.chunk_numba` (same arguments and output) for ``"numba"``."""
    from .engines import resolve_engine

    if resolve_engine(engine) == "numba":
        from .chunk_numba import eval_chunk as compiled

        return compiled
    return eval_chunk


#: cells per slab inside a chunk: temporaries stay small enough for the CPU caches
SLAB_CELLS = 65536


def _slabs(layout: Layout, arrays: tuple, shape: tuple[int, ...], cells: int = SLAB_CELLS):
    """Split a chunk's arguments into slabs of about ``cells`` cells along one axis.

    Yields ``((axis, start, stop), slab_arguments)``; ``axis`` is None when the chunk is one
    slab.
    """
    m = len(shape)
    ax = next((a for a in range(m) if int(np.prod(shape[a + 1 :])) <= cells), m - 1)
    inner = max(int(np.prod(shape[ax + 1 :])), 1)
    step = max(cells // inner, 1)
    if m == 0 or step >= shape[ax]:
        yield (None, 0, 0), arrays
        return
    for start in range(0, shape[ax], step):
        sl = slice(start, start + step)
        out = []
        for a, spec in zip(arrays, layout.args, strict=True):
            if ax in spec.axes:
                idx = [slice(None)] * np.ndim(a)
                idx[spec.axes.index(ax)] = sl
                a = a[tuple(idx)]
            out.append(a)
        yield (ax, start, min(start + step, shape[ax])), tuple(out)


def _quadratic(bb, bt, tt: float, nb: int, P: int) -> np.ndarray:
    """Assemble a (beta, theta) matrix from the accumulators of its beta-beta and beta-theta
    parts and its theta-theta sum."""
    M = np.zeros((P, P))
    M[:nb, :nb] = bb.result()
    if bt is not None:
        v = bt.result()
        M[:nb, nb] = v
        M[nb, :nb] = v
        M[nb, nb] = tt
    return M


def finalize_eval(
    layout: Layout, vec: np.ndarray, *, hessian: bool = True, final: bool = False, meat: bool = True
) -> dict:
    """Unpack the tree-summed vector of an evaluation pass."""
    return eval_packer(layout, hessian=hessian, final=final, meat=meat).unpack(vec)


# -------------------------------------------------------------------------- cluster scores
def cluster_chunk(layout: Layout, params: np.ndarray, keep: tuple[int, ...], *arrays) -> np.ndarray:
    """Per-cluster score sums of one chunk, clusters being the cells of the ``keep`` axes.

    Returns an array with the chunk's extent along ``keep`` (size 1 elsewhere) and a last axis
    of length ``P + 1``: the summed scores ``sum w g x`` (and ``sum w f_t`` for NB2) of each
    cluster, then its number of used cells.
    """
    with np.errstate(all="ignore"):
        d = ChunkData(layout, arrays)
        fam = layout.family
        nb = layout.n_beta
        beta, theta = params[:nb], params[nb:]
        eta = d.eta(beta)
        der = fam.derivatives(d.y, eta, d.aux, theta)
        c = d.contractor
        parts = [c.cluster_vector(d.w * der.g, keep)]
        kept = frozenset(keep)
        if fam.n_extra:
            parts.append(_compact(partial_sum(c.reducer(d.w * der.f_t), kept), keep)[..., None])
        parts.append(_compact(partial_sum(c.reducer(d.used.astype(np.float64)), kept), keep)[..., None])
        scores = np.concatenate(parts, axis=-1)
    shape = [d.shape[ax] if ax in kept else 1 for ax in range(len(d.shape))]
    return scores.reshape(shape + [scores.shape[-1]])


# -------------------------------------------------------------------------- predictions
def predict_chunk(layout: Layout, params: np.ndarray, which: str, *arrays) -> np.ndarray:
    """eta (``which="linear"``) or its inverse link (``"mean"``) at every cell of the chunk;
    NaN where an input is missing. The ``y`` argument only gives the chunk's shape."""
    with np.errstate(all="ignore"):
        d = ChunkData(layout, arrays, predict=True)
        eta = d.eta(params[: layout.n_beta])
        return eta if which == "linear" else layout.family.inverse_link(eta)
