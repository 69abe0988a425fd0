"""The compiled evaluation kernel (``engine="numba"``) against the numpy kernel and the expanded design.

Hypothesis draws panels of 1-4 dims with blocks on every subset of the axes (so every route of
the sweep runs: packed full-grid columns, scatter-adds onto small grids, pairs of small blocks
whose union is or is not the full grid), chunkings, slab sizes, missing cells, weights, offsets
and float32 inputs, for every family of the registry (NB2 with its log-alpha estimated). The
reference is the numpy kernel (to 1e-12) and, independently, the log-likelihood, gradient and
Hessian formed from the expanded N x P design and the family's per-cell derivatives.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daskglm as dg
from daskglm.api.registry import FAMILIES
from daskglm.graph import passes as graph
from daskglm.kernels import chunk as kernels
from daskglm.kernels import chunk_numba as kernels_numba
from daskglm.kernels import engines
from daskglm.kernels.layout import ArgSpec, Block, Layout

pytestmark = pytest.mark.skipif(not engines.numba_available(), reason="numba is not installed")


def _families():
    return [pytest.param(cls(), id=name) for name, cls in FAMILIES.items()] + [
        pytest.param(dg.NegativeBinomial(alpha=0.7), id="nb_fixed_alpha")
    ]


def _response(family, rng, eta, shape):
    aux = {}
    if family.name == "gaussian":
        y = eta + rng.standard_normal(shape)
    elif family.name in ("poisson", "negative_binomial"):
        y = rng.poisson(np.exp(np.clip(eta, -5, 3)) * 2).astype(float)
    elif family.name == "binomial":
        aux["trials"] = rng.integers(1, 9, shape).astype(float)
        y = rng.binomial(aux["trials"].astype(int), 0.4).astype(float)
    else:  # exponential
        aux["event"] = rng.integers(0, 2, shape).astype(float)
        y = rng.exponential(1.0, shape)
    return y, aux


@st.composite
def cases(draw):
    m = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=m, max_size=m)))
    subsets = [tuple(s) for r in range(1, m + 1) for s in itertools.combinations(range(m), r)]
    blocks = draw(st.lists(st.sampled_from(subsets), min_size=0, max_size=5))
    sizes = draw(st.lists(st.integers(1, 3), min_size=len(blocks), max_size=len(blocks)))
    features = draw(st.lists(st.booleans(), min_size=len(blocks), max_size=len(blocks)))
    cuts = [sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=2)))) for n in shape]
    return {
        "shape": shape,
        "blocks": blocks,
        "sizes": sizes,
        "features": features,
        "intercept": draw(st.booleans()) or not blocks,
        "cuts": [[c for c in cs if 0 < c < n] for cs, n in zip(cuts, shape, strict=True)],
        "slab": draw(st.sampled_from([1, 3, 17, 10**6])),
        "missing": draw(st.sampled_from(["none", "y", "drop"])),
        "weights": draw(st.sampled_from([None] + subsets)),
        "offset": draw(st.sampled_from([None] + subsets)),
        "float32": draw(st.booleans()),
    }


def _model(family, case, seed):
    """A layout, its chunk arguments (numpy, full panel) and the expanded-design reference."""
    rng = np.random.default_rng(seed)
    shape, m = case["shape"], len(case["shape"])
    args, values, blocks = [], [], []

    def add(name, role, axes, arr, n_features=None):
        args.append(ArgSpec(name, role, tuple(axes), n_features, sanitize=True))
        values.append(arr)
        return len(args) - 1

    iy = add("y", "y", range(m), None)
    if case["intercept"]:
        blocks.append(Block((), ("Intercept",), (), intercept=True))
    for b, (axes, p, feat) in enumerate(zip(case["blocks"], case["sizes"], case["features"], strict=True)):
        grid = tuple(shape[d] for d in axes)
        names = tuple(f"x{b}_{q}" for q in range(p))
        if feat:
            src = (add(f"x{b}", "x", axes, rng.standard_normal(grid + (p,)) * 0.3, p),)
        else:
            src = tuple(add(n, "x", axes, rng.standard_normal(grid) * 0.3) for n in names)
        blocks.append(Block(tuple(axes), names, src))
    if case["weights"] is not None:
        w = rng.integers(0, 4, tuple(shape[d] for d in case["weights"])).astype(float)
        add("w", "weights", case["weights"], w)
    if case["offset"] is not None:
        add("off", "offset", case["offset"], rng.uniform(-0.5, 0.5, tuple(shape[d] for d in case["offset"])))
    layout0 = Layout(tuple(f"d{d}" for d in range(m)), tuple(args), tuple(blocks), family, "raise")
    P = layout0.n_params
    params = rng.standard_normal(P) * 0.3
    if family.n_extra:
        params[-1] = np.log(0.5)
    # the expanded design and the response drawn from it
    cols = []
    for blk in blocks:
        if blk.intercept:
            cols.append(np.ones(shape))
            continue
        for k in blk.sources:
            a = _full(values[k], args[k], shape)
            cols += [a] if a.ndim == m else [a[..., q] for q in range(a.shape[-1])]
    X = np.stack([c.reshape(-1) for c in cols], axis=1) if cols else np.zeros((int(np.prod(shape)), 0))
    off = np.zeros(shape)
    if case["offset"] is not None:
        off = _full(values[-1], args[-1], shape)
    eta = (X @ params[: layout0.n_beta]).reshape(shape) + off
    y, aux = _response(family, rng, eta, shape)
    values[iy] = y
    for role, arr in aux.items():
        add(role, role, range(m), arr)
    used = np.ones(shape, bool)
    if case["missing"] in ("y", "drop"):
        hole = rng.random(shape) < 0.2
        y[hole] = np.nan
        used &= ~hole
    missing = "raise"
    if case["missing"] == "drop" and case["blocks"]:
        k = blocks[-1].sources[0]
        values[k] = values[k].copy()
        bad = rng.random(values[k].shape) < 0.2
        values[k][bad] = np.nan
        badcells = _full(bad, args[k], shape)
        used &= ~(badcells.any(axis=-1) if badcells.ndim > m else badcells)
        missing = "drop"
    layout = Layout(layout0.dims, tuple(args), tuple(blocks), family, missing)
    if case["float32"]:
        values = [
            v.astype(np.float32) if a.role in ("x", "y") else v for v, a in zip(values, args, strict=True)
        ]
        X = np.stack([np.float64(np.float32(c.reshape(-1))) for c in cols], axis=1) if cols else X
        y = values[iy].astype(np.float64)
    w = np.ones(shape)
    if case["weights"] is not None:
        w = _full(values[layout.role("weights")[0]], args[layout.role("weights")[0]], shape)
    used &= w != 0
    u = used.reshape(-1)
    Xu, wu = np.nan_to_num(X[u]), w.reshape(-1)[u]
    etau = Xu @ params[: layout.n_beta] + off.reshape(-1)[u]
    der = family.derivatives(
        y.reshape(-1)[u], etau, {k: v.reshape(-1)[u] for k, v in aux.items()}, params[layout.n_beta :]
    )
    ref = {"ll": np.sum(wu * der.f), "grad": Xu.T @ (wu * der.g), "hess": Xu.T @ ((wu * der.h)[:, None] * Xu)}
    ref["meat"] = Xu.T @ ((wu * der.g**2)[:, None] * Xu)
    if family.n_extra:
        ref["grad"] = np.append(ref["grad"], np.sum(wu * der.f_t))
        bt = Xu.T @ (wu * der.f_et)
        ref["hess"] = np.block([[ref["hess"], bt[:, None]], [bt[None, :], np.sum(wu * der.f_tt)]])
        mt = Xu.T @ (wu * der.g * der.f_t)
        ref["meat"] = np.block([[ref["meat"], mt[:, None]], [mt[None, :], np.sum(wu * der.f_t**2)]])
    # the size of the terms each sum adds up (its rounding is relative to that, not to the sum:
    # a gradient near the optimum is a cancellation)
    A, aw = np.abs(Xu), np.abs(wu)
    scale = {"ll": np.sum(aw * np.abs(der.f)), "dev": np.sum(aw * np.abs(der.f))}
    scale["grad"] = np.max(A.T @ (aw * np.abs(der.g)), initial=0.0)
    scale["hess"] = np.max(A.T @ ((aw * np.abs(der.h))[:, None] * A), initial=0.0)
    scale["meat"] = np.max(A.T @ ((aw * der.g**2)[:, None] * A), initial=0.0)
    if family.n_extra:
        scale["grad"] = max(scale["grad"], np.sum(aw * np.abs(der.f_t)))
        terms = (np.abs(der.f_et), np.abs(der.f_tt), np.abs(der.g * der.f_t), der.f_t**2)
        scale["hess"] = max(scale["hess"], *(np.max(A.T @ (aw * t), initial=0.0) for t in terms[:1]))
        scale["hess"] = max(scale["hess"], np.sum(aw * terms[1]))
        scale["meat"] = max(scale["meat"], np.max(A.T @ (aw * terms[2]), initial=0.0), np.sum(aw * terms[3]))
    ref["scale"] = scale
    return layout, values, params, ref


def _full(arr, spec, shape):
    m = len(shape)
    target = [1] * m
    for k, ax in enumerate(spec.axes):
        target[ax] = arr.shape[k]
    extra = arr.shape[len(spec.axes) :]
    return np.broadcast_to(np.reshape(arr, target + list(extra)), tuple(shape) + tuple(extra))


def _chunked(func, layout, values, params, hessian, final, cuts):
    """Sum of ``func`` over the chunks (boundaries ``cuts`` per axis)."""
    m = layout.ndim
    edges = [[0] + cs + [n] for cs, n in zip(cuts, np.shape(values[layout.role("y")[0]]), strict=True)]
    total = 0.0
    for cell in itertools.product(*[range(len(e) - 1) for e in edges]):
        sl = [slice(edges[d][c], edges[d][c + 1]) for d, c in enumerate(cell)]
        part = []
        for v, spec in zip(values, layout.args, strict=True):
            idx = tuple(sl[d] for d in spec.axes)
            part.append(v[idx])
        total = total + func(layout, params, hessian, final, *part).reshape(-1)
    assert m >= 1
    return total


def _close(got, want, rtol, scale=0.0):
    """Largest difference relative to the largest entry of ``want`` (or ``scale``)."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    scale = max(np.max(np.abs(want)), scale, 1e-300) if want.size else 1.0
    err = np.max(np.abs(got - want)) / scale if want.size else 0.0
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


@pytest.mark.parametrize("family", _families())
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(), seed=st.integers(0, 2**31 - 1))
def test_numba_engine_equals_numpy_and_the_expanded_design(family, case, seed, monkeypatch):
    monkeypatch.setattr(kernels_numba, "SLAB_CELLS", case["slab"])
    layout, values, params, ref = _model(family, case, seed)
    for hessian, final in itertools.product((True, False), (False, True)):
        packer = kernels.eval_packer(layout, hessian=hessian, final=final)
        got = packer.unpack(
            _chunked(kernels_numba.eval_chunk, layout, values, params, hessian, final, case["cuts"])
        )
        want = packer.unpack(
            _chunked(kernels.eval_chunk, layout, values, params, hessian, final, case["cuts"])
        )
        for key in want:
            # the deviance cancels: compared on the log-likelihood's scale
            _close(got[key], want[key], 1e-12, ref["scale"].get(key, 0.0))
        checked = ("ll", "grad") + ((("hess", "meat") if final else ("hess",)) if hessian else ())
        for key in checked:
            _close(got[key], ref[key], 1e-9, ref["scale"][key])


@pytest.mark.parametrize("family", _families())
def test_final_pass_and_graph_switch(family):
    """The final pass (meat, deviance, separated cells) through ``graph.eval_graph`` on a
    dask panel, both engines, and the default engine's name."""
    import dask.array as da

    case = {
        "shape": (6, 5, 4), "blocks": [(0, 1, 2), (0, 1), (0, 2), (1,), (2,)], "sizes": [2, 2, 1, 2, 1],
        "features": [True, False, True, False, False], "intercept": True, "cuts": [[3], [2], []],
        "slab": 7, "missing": "y", "weights": (0, 2), "offset": (1,), "float32": False,
    }  # fmt: skip
    layout, values, params, ref = _model(family, case, 5)
    arrays = []
    for v, spec in zip(values, layout.args, strict=True):
        chunks = tuple(3 if a == 0 else -1 for a in spec.axes) + ((-1,) if spec.n_features else ())
        arrays.append(da.from_array(v, chunks=chunks))
    for final in (False, True):
        out = {}
        for engine in engines.ENGINES:
            (vec,) = graph.run(
                None, "eval", graph.eval_graph(layout, arrays, params, final=final, engine=engine)
            )
            out[engine] = kernels.finalize_eval(layout, vec, final=final)
        for key in out["numpy"]:
            _close(out["numba"][key], out["numpy"][key], 1e-12, ref["scale"].get(key, 0.0))
        _close(out["numba"]["hess"], ref["hess"], 1e-9, ref["scale"]["hess"])


def test_engine_names_and_environment(monkeypatch):
    monkeypatch.delenv(engines.ENV_VAR, raising=False)
    assert engines.resolve_engine(None) == "numba"
    assert engines.resolve_engine("NumPy") == "numpy"
    monkeypatch.setenv(engines.ENV_VAR, "numpy")
    assert engines.resolve_engine(None) == "numpy"
    assert kernels.eval_kernel() is kernels.eval_chunk
    monkeypatch.setenv(engines.ENV_VAR, "fortran")
    with pytest.raises(ValueError, match="DASKGLM_ENGINE='fortran' is not an engine"):
        engines.resolve_engine(None)
    with pytest.raises(ValueError, match="engine='cuda' is not an engine"):
        engines.resolve_engine("cuda")


def test_fit_and_cli_take_the_engine(tmp_path, capsys):
    """``dg.fit(engine=...)`` and ``daskglm fit --engine``: both engines give the same fit of a
    float32 zarr panel (NB2, estimated alpha, weights and an exposure), and a bad name is refused."""
    import json

    from daskglm.api.cli import main
    from daskglm.api.simulate import simulate_panel

    ds = simulate_panel(
        {"i": 30, "j": 20, "k": 6}, "negative_binomial", seed=2, chunks={"i": 15, "j": 10}, exposure=True
    )
    ds["w"] = ds["y"].isel(k=0, drop=True) * 0 + (ds.i % 3 + 1).astype(float)
    store = str(tmp_path / "p.zarr")
    ds.astype("float32").to_zarr(store)
    x = [v for v in ds.data_vars if v.startswith("x_")]
    fits = {
        e: dg.fit(store, "y", x, dg.NegativeBinomial(), exposure="exposure", weights="w", engine=e)
        for e in engines.ENGINES
    }
    assert fits["numba"].engine == "numba" and fits["numpy"].engine == "numpy"
    np.testing.assert_allclose(fits["numba"].params, fits["numpy"].params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fits["numba"].bse, fits["numpy"].bse, rtol=1e-10)
    assert fits["numba"].llf == pytest.approx(fits["numpy"].llf, rel=1e-13)
    out = tmp_path / "res.json"
    argv = ["fit", store, "--y", "y", "--x", ",".join(x), "--family", "poisson", "--exposure", "exposure"]
    assert main(argv + ["--out", str(out), "--engine", "numpy"]) == 0
    ref = dg.fit(store, "y", x, "poisson", exposure="exposure", engine="numba")
    got = json.loads(out.read_text())["params"]
    np.testing.assert_allclose([got[k] for k in ref.params.index], ref.params, rtol=1e-10)
    capsys.readouterr()
    with pytest.raises(ValueError, match="engine='fast' is not an engine"):
        dg.fit(store, "y", x, "poisson", engine="fast")


@pytest.mark.parametrize("family", _families())
def test_final_pass_counts_separated_cells(family):
    """Cells whose fitted mean has run off to the boundary (eta far below -23, or beyond +-23 for
    the binomial) are counted by the family's own rule in both engines."""
    case = {
        "shape": (5, 4), "blocks": [(0, 1)], "sizes": [1], "features": [False], "intercept": True,
        "cuts": [[2], []], "slab": 3, "missing": "y", "weights": None, "offset": (0,), "float32": False,
    }  # fmt: skip
    layout, values, params, ref = _model(family, case, 11)
    ioff = layout.role("offset")[0]
    values[ioff] = values[ioff].copy()
    values[ioff][:2] = -40.0  # the first two rows: eta ~ -40
    iy = layout.role("y")[0]
    values[iy] = values[iy].copy()
    values[iy][:2] = np.where(np.isnan(values[iy][:2]), np.nan, 0.0)
    for k in layout.role("event"):
        values[k] = values[k].copy()
        values[k][:2] = 0.0
    want, got = (
        kernels.finalize_eval(layout, f(layout, params, True, True, *values).reshape(-1), final=True)
        for f in (kernels.eval_chunk, kernels_numba.eval_chunk)
    )
    if family.name != "gaussian":
        assert want["n_separated"] > 0
    assert got["n_separated"] == want["n_separated"]
    _close(got["meat"], want["meat"], 1e-12, ref["scale"]["meat"])


@pytest.mark.parametrize("family", _families())
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_fixed_effects_evaluation_equals_numpy(family, case, seed, data, monkeypatch):
    """``effects.fe_eval_chunk`` (numpy) against the sweep's ``fe_eval_chunk``: effects on any
    axes, level values with dropped (NaN) levels, every family, final and not."""
    from daskglm.kernels import effects

    monkeypatch.setattr(kernels_numba, "SLAB_CELLS", case["slab"])
    layout, values, params, ref = _model(family, case, seed)
    m = layout.ndim
    subsets = [tuple(s) for r in range(1, m + 1) for s in itertools.combinations(range(m), r)]
    chosen = data.draw(st.lists(st.sampled_from(subsets), min_size=1, max_size=2))
    rng = np.random.default_rng(seed)
    shape = values[layout.role("y")[0]].shape
    effs, levels = [], []
    for axes in chosen:
        grid = tuple(shape[a] for a in axes)
        effs.append(effects.Effect(tuple(f"d{a}" for a in axes), axes, grid))
        lv = rng.uniform(-0.3, 0.3, grid)
        lv[rng.random(grid) < 0.15] = np.nan
        levels.append(lv)
    for hessian, final in itertools.product((True, False), (False, True)):
        want = effects.fe_eval_chunk(layout, effs, params, hessian, final, tuple(levels), *values)
        got = kernels_numba.fe_eval_chunk(layout, effs, params, hessian, final, tuple(levels), *values)
        assert set(got) == set(want)
        for key, w in want.items():
            g = got[key]
            if isinstance(w, list):
                assert len(g) == len(w)
                for gj, wj in zip(g, w, strict=True):
                    assert gj.shape == wj.shape, key
                    _close(gj, wj, 1e-12, ref["scale"]["grad" if key == "grad_fe" else "hess"])
            else:
                assert np.shape(g) == np.shape(w), key
                _close(g, w, 1e-12, ref["scale"].get(key, ref["scale"]["ll"] if key == "ll_const" else 0.0))


def test_local_pass_equals_the_dask_graph():
    """In-memory inputs on the threaded scheduler run as a ``graph.LocalPass`` (no dask graph):
    the same vector, bit for bit, as the dask graph's tree sum (forced here by dask's
    synchronous scheduler), for the setup pass and an evaluation pass; lazy inputs and other
    schedulers keep the dask graph."""
    import dask
    import dask.array as da

    case = {
        "shape": (6, 5, 4), "blocks": [(0, 1, 2), (0, 1), (2,)], "sizes": [2, 1, 1],
        "features": [False, False, False], "intercept": True, "cuts": [[], [], []],
        "slab": 7, "missing": "y", "weights": (0, 2), "offset": (1,), "float32": False,
    }  # fmt: skip
    layout, values, params, _ = _model(dg.Poisson(), case, 3)
    arrays = graph.align_arrays(
        values,
        [spec.axes for spec in layout.args],
        [spec.n_features is not None for spec in layout.args],
        ((2, 2, 2), (3, 2), (4,)),
    )  # numpy inputs: their chunks are views, already data
    builders = {
        "setup": lambda: graph.setup_graph(layout, arrays, "numba"),
        "eval": lambda: graph.eval_graph(layout, arrays, params, final=True, engine="numba"),
    }
    for what, build in builders.items():
        local = build()
        assert isinstance(local, graph.LocalPass) and len(local.chunks) == 6
        (got,) = graph.run(None, what, local)
        with dask.config.set(scheduler="sync"):
            g = build()
            assert isinstance(g, da.Array)
            (want,) = graph.run(None, what, g)
        np.testing.assert_array_equal(got, want)
    lazy = [a + 0 if isinstance(a, da.Array) and a.ndim == 3 else a for a in arrays]
    assert isinstance(graph.eval_graph(layout, lazy, params), da.Array)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_read_only_inputs_fit_without_warnings(engine):
    """Read-only arrays (pandas' copy-on-write columns, memory maps, statsmodels' data sets)
    fit with no warning from either engine (numba had warned of an "unsafe cast" when the
    columns went into its typed list), and with the estimates of writable copies, which
    statsmodels' GLM reproduces."""
    import warnings

    import statsmodels.api as sm

    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 2))
    y = rng.poisson(np.exp(0.3 + x @ [0.2, -0.4])).astype(float)
    frozen = {"y": y.copy(), "x1": x[:, 0].copy(), "x2": x[:, 1].copy()}
    for v in frozen.values():
        v.flags.writeable = False
    ds = xr.Dataset({k: ("obs", v) for k, v in frozen.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = dg.fit(ds, "y", ["x1", "x2"], "poisson", engine=engine, progress=False)
    ref = sm.GLM(y, sm.add_constant(x), family=sm.families.Poisson()).fit()
    np.testing.assert_allclose(res.params.to_numpy(), ref.params, rtol=1e-9)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse, rtol=1e-7)
