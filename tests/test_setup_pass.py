"""The setup pass (``kernels.setup_chunk``) against a cell-by-cell reference on the expanded panel.

Every packed field of the setup pass (counts, weighted sums, the log-likelihood constants, the
saturated log-likelihood, the Gram matrix, the bad-input, exposure and domain counts) is
computed here independently from the broadcast full-grid arrays: ``scipy.special`` per cell for
the constants (not the families' tabulated path) and ``X' diag(w) X`` from the expanded design.
Panels have missing responses, zero and negative weights, offsets, a zero exposure, non-finite
covariates (and, with ``missing="drop"``, non-finite weights and auxiliary inputs), domain
violations, float32 inputs; every family of the registry; both engines (the compiled Gram is a
Gaussian layout's Hessian); whole chunks, tiny slabs and several chunks summed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import special

import daskglm as dg
from daskglm.api.registry import FAMILIES
from daskglm.kernels import chunk as kernels
from daskglm.kernels import engines
from daskglm.kernels.layout import ArgSpec, Block, Layout

ENGINES = ["numpy"] + (["numba"] if engines.numba_available() else [])
SHAPE = (4, 5, 7)


def _families():
    return [pytest.param(cls(), id=name) for name, cls in FAMILIES.items()] + [
        pytest.param(dg.NegativeBinomial(alpha=0.7), id="nb_fixed_alpha")
    ]


def _panel(family, seed: int, missing: str, float32: bool):
    """A layout and its full-panel arguments with every kind of awkward cell."""
    rng = np.random.default_rng(seed)
    shape = SHAPE
    args, values = [], []

    def add(name, role, axes, arr, n_features=None):
        args.append(ArgSpec(name, role, tuple(axes), n_features))
        values.append(arr)
        return len(args) - 1

    def grid(axes):
        return tuple(shape[d] for d in axes)

    blocks = [Block((), ("Intercept",), (), intercept=True)]
    for b, axes in enumerate([(0, 1, 2), (0, 1), (0, 2), (1, 2), (2,)]):
        names = (f"x{b}a", f"x{b}b")
        if b == 1:  # a feature-axis source
            x = rng.standard_normal(grid(axes) + (2,))
            x[0, 1, 1] = np.nan
            src = (add(f"x{b}", "x", axes, x, 2),)
        else:
            src = []
            for n in names:
                x = rng.standard_normal(grid(axes))
                x.reshape(-1)[rng.integers(0, x.size, 2)] = [np.nan, np.inf]
                src.append(add(n, "x", axes, x))
            src = tuple(src)
        blocks.append(Block(axes, names, src))
    iy = add("y", "y", (0, 1, 2), None)
    mu = np.exp(rng.uniform(-1, 1.5, shape))
    aux = {}
    if family.name == "gaussian":
        y = rng.standard_normal(shape) + 2
    elif family.name in ("poisson", "negative_binomial"):
        y = rng.poisson(mu).astype(float)
        y[1, 2, 3] = -1.0  # a domain violation
    elif family.name == "binomial":
        m = rng.integers(1, 9, shape).astype(float)
        y = rng.binomial(m.astype(int), 0.4).astype(float)
        y[1, 2, 3] = m[1, 2, 3] + 1  # more successes than trials
        m[2, 2, 2] = 2.5  # not a whole number of trials
        aux["trials"] = m
    else:
        y = rng.exponential(1.0, shape)
        y[1, 2, 3] = 0.0  # not a positive duration
        aux["event"] = rng.integers(0, 2, shape).astype(float)
    y.reshape(-1)[rng.integers(0, y.size, 6)] = np.nan
    y.reshape(-1)[np.flatnonzero(np.isnan(y))[:2]] = [np.inf, -np.inf]  # counted (inf_y), never used
    values[iy] = y
    for role, a in aux.items():
        if missing == "drop":
            a.reshape(-1)[rng.integers(0, a.size, 3)] = np.nan
        else:  # non-finite only where the response is missing
            a[np.isnan(y)] = np.inf
        add(role, role, (0, 1, 2), a)
    w = rng.integers(0, 4, grid((0, 2))).astype(float)
    w[0, 0] = -1.0
    if missing == "drop":
        w[1, 1] = np.nan
    add("w", "weights", (0, 2), w)
    add("off", "offset", (1, 2), rng.uniform(-0.5, 0.5, grid((1, 2))))
    if family.log_link:
        e = rng.uniform(0.5, 2.0, grid((0, 1)))
        e[3, 4] = 0.0
        add("e", "exposure", (0, 1), e)
    if float32:
        values = [v.astype(np.float32) for v in values]
    return Layout(("i", "j", "k"), tuple(args), tuple(blocks), family, missing), values


def _full(a, spec, shape):
    """An argument broadcast onto the full grid (feature axis last)."""
    target = [1] * len(shape)
    for k, ax in enumerate(spec.axes):
        target[ax] = a.shape[k]
    feat = () if spec.n_features is None else (spec.n_features,)
    return np.broadcast_to(np.asarray(a, dtype=np.float64).reshape(target + list(feat)), shape + feat)


def _reference(layout: Layout, values) -> dict:
    """Every field of the setup pass, cell by cell on the expanded panel."""
    fam, shape = layout.family, SHAPE
    full = [_full(v, s, shape) for v, s in zip(values, layout.args, strict=True)]

    def finite(k):
        ok = np.isfinite(full[k])
        return ok.all(axis=-1) if layout.args[k].n_features is not None else ok

    def own_finite(k):
        ok = np.isfinite(np.asarray(values[k], dtype=np.float64))
        return ok.all(axis=-1) if layout.args[k].n_features is not None else ok

    (iy,) = layout.role("y")
    (iw,) = layout.role("weights")
    y = full[iy]
    cand = np.isfinite(y) & (full[iw] != 0)
    used = cand.copy()
    if layout.missing == "drop":
        for k, s in enumerate(layout.args):
            if s.role != "y":
                used &= finite(k)
    w = np.where(used, full[iw], 0.0)
    yu = np.where(used, y, fam.safe_y)
    aux = {
        r: np.where(used, full[layout.role(r)[0]], {"trials": 1.0, "event": 0.0}[r]) for r in fam.aux_roles
    }
    off = full[layout.role("offset")[0]].copy()
    for k in layout.role("exposure"):
        off = off + np.log(full[k])
    off = np.where(used, off, 0.0)
    nargs = len(layout.args)
    out = {"bad_used": np.zeros(nargs), "bad_any": np.zeros(nargs), "nonpos_exposure": np.zeros(nargs)}
    for k, s in enumerate(layout.args):
        if s.role == "y":
            continue
        out["bad_used"][k] = np.count_nonzero(~finite(k) & cand)
        out["bad_any"][k] = np.count_nonzero(~own_finite(k))
        if s.role == "exposure":
            out["nonpos_exposure"][k] = np.count_nonzero(~(full[k] > 0) & used)
    out["n_candidate"] = np.count_nonzero(cand)
    out["n_used"] = np.count_nonzero(used)
    out["neg_weights"] = np.count_nonzero((w < 0) & used)
    out["inf_y"] = np.count_nonzero(np.isinf(y) & (full[iw] != 0))
    rules = fam.domain_rules()
    out["domain"] = np.array([np.count_nonzero(r.bad(yu, aux) & used) for r in rules] or [0])
    e = np.exp(off)
    out.update(sw=w.sum(), swy=(w * yu).sum(), swy2=(w * yu * yu).sum(), swoff=(w * e).sum())
    out["swyoff"] = (w * yu * e).sum()
    out["swd"] = (w * aux["event"]).sum() if "event" in aux else 0.0
    out["swm"] = (w * aux["trials"]).sum() if "trials" in aux else 0.0
    # the constants, per cell with scipy (not the families' tables)
    with np.errstate(all="ignore"):
        lf = special.gammaln
        if fam.name in ("poisson", "negative_binomial"):
            const = -lf(yu + 1)
        elif fam.name == "binomial":
            m = aux["trials"]
            const = lf(m + 1) - lf(yu + 1) - lf(m - yu + 1)
        else:
            const = np.zeros(shape)
        out["ll_const"] = (w * const).sum()
        xl = special.xlogy
        if fam.name == "gaussian":
            sat = np.zeros(shape)
        elif fam.name == "poisson":
            sat = xl(yu, yu) - yu
        elif fam.name == "binomial":
            m = aux["trials"]
            sat = xl(yu, yu) + xl(m - yu, m - yu) - xl(m, m)
        elif fam.name == "exponential":
            sat = -aux["event"] * (np.log(yu) + 1.0)
        elif fam.alpha is None:
            sat = None
        else:
            r = 1.0 / fam.alpha
            sat = lf(yu + r) - lf(r) + r * (np.log(r) - np.log(r + yu)) + xl(yu, yu) - yu * np.log(r + yu)
        out["ll_sat"] = np.nan if sat is None else (w * sat).sum()
    # the Gram matrix from the expanded design (non-finite covariates as 0, as the kernels)
    cols = []
    for b in layout.blocks:
        if b.intercept:
            cols.append(np.ones(shape))
            continue
        for k in b.sources:
            a = full[k]
            cols += [a] if layout.args[k].n_features is None else [a[..., q] for q in range(a.shape[-1])]
    X = np.stack([np.where(np.isfinite(c), c, 0.0).reshape(-1) for c in cols], axis=1)
    out["gram"] = X.T @ (w.reshape(-1)[:, None] * X)
    return out


def _chunks(layout: Layout, values, cuts):
    """The panel's chunks: every combination of the pieces of each axis cut at ``cuts``."""
    bounds = [[0, *c, n] for c, n in zip(cuts, SHAPE, strict=True)]
    for pick in itertools.product(*[list(itertools.pairwise(b)) for b in bounds]):
        out = []
        for v, s in zip(values, layout.args, strict=True):
            idx = tuple(slice(*pick[d]) for d in s.axes)
            out.append(v[idx] if idx else v)
        yield out


def _check(got: dict, ref: dict, layout: Layout, chunked: bool = False) -> None:
    for name, _ in kernels.setup_packer(layout).fields:
        g, r = np.asarray(got[name], dtype=float), np.asarray(ref[name], dtype=float)
        if name == "bad_any" and chunked:
            # every chunk counts the values of the inputs it is handed, and an input off a chunked
            # axis is handed to several chunks: only "any" is meaningful (kernels/checks.py reads > 0)
            np.testing.assert_array_equal(g > 0, r > 0, err_msg=name)
        elif name.startswith(("n_", "bad", "nonpos", "domain", "neg")):
            np.testing.assert_array_equal(g, r, err_msg=name)
        else:
            scale = np.nanmax(np.abs(np.where(np.isfinite(r), r, 0.0)), initial=1.0)
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12 * scale, err_msg=name)


@pytest.mark.parametrize("family", _families())
@pytest.mark.parametrize("missing", ["raise", "drop"])
@pytest.mark.parametrize("engine", ENGINES)
def test_setup_fields_match_cell_reference(family, missing, engine, monkeypatch):
    """Every field, whole chunk and in chunks with tiny slabs, float64 and float32."""
    for seed, float32 in ((0, False), (1, True)):
        layout, values = _panel(family, seed, missing, float32)
        ref = _reference(layout, values)
        packer = kernels.setup_packer(layout)
        whole = packer.unpack(kernels.setup_chunk(layout, *values, engine=engine).reshape(-1))
        _check(whole, ref, layout)
        monkeypatch.setattr(kernels, "SLAB_CELLS", 6)  # slabs cut along every axis
        slabbed = packer.unpack(kernels.setup_chunk(layout, *values, engine=engine).reshape(-1))
        _check(slabbed, ref, layout)
        total = sum(
            kernels.setup_chunk(layout, *chunk, engine=engine).reshape(-1)
            for chunk in _chunks(layout, values, [[1, 3], [2], [3]])
        )
        monkeypatch.undo()
        _check(packer.unpack(total), ref, layout, chunked=True)


@pytest.mark.skipif(not engines.numba_available(), reason="numba is not installed")
def test_compiled_gram_equals_numpy_gram():
    """The Gaussian-Hessian route equals the numpy accumulator's ``X' diag(w) X`` to 1e-12."""
    layout, values = _panel(dg.Poisson(), 3, "drop", False)
    a = kernels.setup_gram(layout, tuple(values), engine="numba")
    b = kernels.setup_gram(layout, tuple(values), engine="numpy")
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_cell_slabs_cover_every_cell_once():
    """:func:`kernels._cell_slabs` cuts a chunk into disjoint slabs of at most ``cells`` cells."""
    layout, values = _panel(dg.Gaussian(), 0, "raise", False)
    (iy,) = layout.role("y")
    seen = np.zeros(SHAPE, dtype=int)
    index = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE)
    vals = list(values)
    vals[iy] = index
    for cells in (1, 6, 35, 10**6):
        seen[:] = 0
        for _, slab in kernels._cell_slabs(layout, tuple(vals), SHAPE, cells):
            assert slab[iy].size <= max(cells, SHAPE[-1])
            seen.reshape(-1)[slab[iy].astype(int).reshape(-1)] += 1
        assert (seen == 1).all()


def test_count_tables_equal_per_cell():
    """The families' tabulated constants are the per-cell values bit for bit, and fall back to
    per-cell evaluation for non-integer or large counts."""
    rng = np.random.default_rng(5)
    y = rng.poisson(4.0, 5000).astype(float)
    m = y + rng.integers(0, 6, y.size)
    for yy in (y, y + 0.5, y * 1e6):
        np.testing.assert_array_equal(dg.Poisson().constant(yy, {}), -special.gammaln(yy + 1))
        np.testing.assert_array_equal(dg.Poisson().saturated(yy, {}), special.xlogy(yy, yy) - yy)
    B = dg.Binomial()
    lf, xl = special.gammaln, special.xlogy
    np.testing.assert_array_equal(B.constant(y, {"trials": m}), lf(m + 1) - lf(y + 1) - lf(m - y + 1))
    np.testing.assert_array_equal(B.saturated(y, {"trials": m}), xl(y, y) + xl(m - y, m - y) - xl(m, m))
    for fam, aux in ((dg.Poisson(), {}), (B, {"trials": m}), (dg.NegativeBinomial(alpha=0.5), {})):
        for yy in (y, y + 0.5):
            const, sat = fam.setup_terms(yy, aux)  # the setup pass's pair, one count index
            np.testing.assert_array_equal(const, fam.constant(yy, aux))
            np.testing.assert_array_equal(sat, fam.saturated(yy, aux))


@pytest.mark.skipif(not engines.numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("family", [dg.Poisson(), dg.Binomial(trials="m"), dg.NegativeBinomial(alpha=0.4)])
def test_compiled_setup_terms_beyond_the_table(family):
    """The compiled setup terms look ``log k!`` up for whole counts below
    ``families_numba.LOG_FACTORIAL_TABLE`` and compute it for the others (large and non-integer
    counts, mixed in one slab): the sums equal scipy's per-cell values to 1e-12."""
    from daskglm.kernels import families_numba

    rng = np.random.default_rng(9)
    shape = (3, 50)
    top = families_numba.LOG_FACTORIAL_TABLE
    y = rng.poisson(3.0, shape).astype(float)
    y[0, :5] = [top - 1, top, top + 7, 1e6, 2.5]
    m = y + rng.integers(0, 5, shape)
    m[1, :3] = [top + 3, 1e7, 7.5]
    args = [ArgSpec("y", "y", (0, 1)), ArgSpec("x", "x", (0, 1))]
    values = [y, rng.standard_normal(shape)]
    if family.aux_roles:
        args.append(ArgSpec("m", "trials", (0, 1)))
        values.append(m)
    blocks = (Block((), ("Intercept",), (), intercept=True), Block((0, 1), ("x",), (1,)))
    layout = Layout(("i", "j"), tuple(args), blocks, family, "raise")
    got = kernels.setup_packer(layout).unpack(
        kernels.setup_chunk(layout, *values, engine="numba").reshape(-1)
    )
    lf, xl = special.gammaln, special.xlogy
    if family.aux_roles:
        const, sat = lf(m + 1) - lf(y + 1) - lf(m - y + 1), xl(y, y) + xl(m - y, m - y) - xl(m, m)
    elif getattr(family, "alpha", None) is None:  # Poisson
        const, sat = -lf(y + 1), xl(y, y) - y
    else:
        r = 1.0 / family.alpha
        const = -lf(y + 1)
        sat = lf(y + r) - lf(r) + r * (np.log(r) - np.log(r + y)) + xl(y, y) - y * np.log(r + y)
    np.testing.assert_allclose(got["ll_const"], const.sum(), rtol=1e-12)
    np.testing.assert_allclose(got["ll_sat"], sat.sum(), rtol=1e-12)
    want_domain = [np.count_nonzero(r.bad(y, {"trials": m})) for r in family.domain_rules()]
    np.testing.assert_array_equal(got["domain"], want_domain)
