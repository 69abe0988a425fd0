"""Simulated panels: lazily generated, chunk by chunk, with the true coefficients attached.

Used by the demo, the CLI's ``simulate``, the examples, the tests and the benchmarks. The
panel is built as a dask graph (random covariates, then the response drawn per chunk with a
seed derived from the chunk's position), so writing it to zarr never holds more than a few
chunks in memory and the same arguments always give the same data. ``daskglm simulate`` writes
it with :func:`daskglm.write_zarr`, compressed with the default codec (blosc-lz4, ``--codec``
to choose; ``benchmarks/CODECS.md`` compares disk size and read speed).
"""

from __future__ import annotations

import itertools
import json

import dask.array as da
import numpy as np
import xarray as xr

__all__ = ["default_blocks", "simulate_panel", "SIM_FAMILIES"]

SIM_FAMILIES = ("gaussian", "poisson", "binomial", "negative_binomial", "exponential")


def default_blocks(dims: tuple[str, ...], per_block: int = 4) -> dict[str, tuple[tuple[str, ...], int]]:
    """Every non-empty subset of ``dims`` as a block of ``per_block`` covariates.

    For ``("i", "j", "k")`` that is 7 blocks, (i,j,k), (i,j), (i,k), (j,k), i, j, k: 28
    coefficients with the default 4 per block.
    """
    out = {}
    for r in range(len(dims), 0, -1):
        for sub in itertools.combinations(dims, r):
            out["x_" + "".join(sub)] = (sub, per_block)
    return out


def _draw(family: str, eta: np.ndarray, aux: dict, rng: np.random.Generator, alpha: float):
    if family == "gaussian":
        return eta + rng.standard_normal(eta.shape)
    if family == "poisson":
        return rng.poisson(np.exp(eta) * aux.get("exposure", 1.0)).astype(np.float64)
    if family == "negative_binomial":
        mu = np.exp(eta) * aux.get("exposure", 1.0)
        lam = rng.gamma(1.0 / alpha, alpha * mu)
        return rng.poisson(lam).astype(np.float64)
    if family == "binomial":
        p = 1.0 / (1.0 + np.exp(-eta))
        return rng.binomial(aux["trials"].astype(np.int64), p).astype(np.float64)
    raise ValueError(family)


def simulate_panel(
    sizes: dict[str, int],
    family: str = "poisson",
    *,
    blocks: dict[str, tuple[tuple[str, ...], int]] | None = None,
    chunks: dict[str, int] | None = None,
    seed: int = 0,
    alpha: float = 0.5,
    missing_fraction: float = 0.0,
    exposure: bool = False,
    dtype=np.float64,
) -> xr.Dataset:
    """A dask-backed panel with response ``y`` drawn from ``family``.

    Parameters
    ----------
    sizes : dict
        Panel dims and their lengths, e.g. ``{"i": 200, "j": 200, "k": 50}``.
    family : str
        One of :data:`SIM_FAMILIES`.
    blocks : dict, optional
        ``name -> (dims, n_columns)``: each block is stored as variables ``name_1`` ...
        ``name_n``; defaults to :func:`default_blocks`.
    chunks : dict, optional
        Chunk length per dim (defaults to about 2**20 cells per chunk).
    seed : int
        Seed of everything random.
    alpha : float
        NB2 dispersion.
    missing_fraction : float
        Share of cells whose ``y`` is set to NaN (an unbalanced panel on the same grid).
    exposure : bool
        Add an ``exposure`` variable over the first two dims (Poisson/NB2); binomial panels
        always get ``trials`` over the first dim(s) and exponential panels an ``event``.
    dtype : numpy dtype
        Storage dtype of the covariates and response (float32 halves the store).

    Returns
    -------
    xarray.Dataset
        With ``attrs["true_params"]`` (JSON: name -> value) and ``attrs["family"]``. Write it
        with ``daskglm.write_zarr(ds, "panel.zarr", codec="lz4")`` (the default codec; or
        ``"zstd[:level]"``, ``"none"``), chunk by chunk.
    """
    if family not in SIM_FAMILIES:
        raise ValueError(f"family={family!r}: simulate one of {SIM_FAMILIES}")
    dims = tuple(sizes)
    shape = tuple(int(sizes[d]) for d in dims)
    if chunks is None:
        full = da.core.normalize_chunks("auto", shape, limit=2**20 * 8, dtype=np.float64)
    else:
        full = da.core.normalize_chunks(tuple(chunks.get(d, sizes[d]) for d in dims), shape)
    cmap = dict(zip(dims, full, strict=True))
    blocks = default_blocks(dims) if blocks is None else blocks
    rs = da.random.RandomState(seed)
    coef_rng = np.random.default_rng(seed + 7919)
    n_cols = sum(n for _, n in blocks.values())
    scale = 0.5 / np.sqrt(max(n_cols, 1))
    intercept = {
        "gaussian": 1.0,
        "poisson": 1.0,
        "negative_binomial": 1.0,
        "binomial": -0.5,
        "exponential": -1.0,
    }[family]
    truth = {"Intercept": intercept}
    ds = xr.Dataset(coords={d: np.arange(sizes[d]) for d in dims})
    eta = da.full(shape, intercept, chunks=full)
    for name, (bdims, n) in blocks.items():
        bshape = tuple(sizes[d] for d in bdims)
        bchunks = tuple(cmap[d] for d in bdims)
        for c in range(1, n + 1):
            vname = f"{name}_{c}"
            x = rs.standard_normal(bshape, chunks=bchunks)
            beta = float(coef_rng.choice([-1, 1]) * coef_rng.uniform(0.5, 1.5) * scale)
            truth[vname] = beta
            ds[vname] = (bdims, x.astype(dtype))
            idx = tuple(slice(None) if d in bdims else None for d in dims)
            eta = eta + beta * x[idx]
    aux = {}
    if exposure and family in ("poisson", "negative_binomial"):
        edims = dims[:2]
        ex = rs.uniform(0.5, 2.0, size=tuple(sizes[d] for d in edims), chunks=tuple(cmap[d] for d in edims))
        ds["exposure"] = (edims, ex.astype(dtype))
        aux["exposure"] = ex[tuple(slice(None) if d in edims else None for d in dims)]
    if family == "binomial":
        tdims = dims[: max(1, len(dims) - 1)]
        tr = rs.randint(1, 20, size=tuple(sizes[d] for d in tdims), chunks=tuple(cmap[d] for d in tdims))
        ds["trials"] = (tdims, tr.astype(dtype))
        aux["trials"] = tr[tuple(slice(None) if d in tdims else None for d in dims)].astype(np.float64)
    names = list(aux)

    def draw(eta_b, *aux_b, block_id=None):
        rng = np.random.default_rng([seed, 104729, *block_id])
        a = {k: np.broadcast_to(v, eta_b.shape) for k, v in zip(names, aux_b, strict=True)}
        if family == "exponential":
            t_event = rng.exponential(np.exp(-eta_b))
            censor = rng.exponential(2.0 * np.exp(-eta_b))  # about a third censored
            out = np.stack([np.minimum(t_event, censor), (t_event <= censor).astype(np.float64)])
        else:
            out = _draw(family, eta_b, a, rng, alpha)[None]
        if missing_fraction > 0:
            out[0][rng.random(eta_b.shape) < missing_fraction] = np.nan
        return out

    drawn = da.map_blocks(
        draw,
        eta,
        *[aux[k] for k in names],
        new_axis=0,
        chunks=((2 if family == "exponential" else 1,),) + full,
        dtype=np.float64,
    )
    ds["y"] = (dims, drawn[0].astype(dtype))
    if family == "exponential":
        ds["event"] = (dims, drawn[1].astype(dtype))
    if family == "negative_binomial":
        truth["alpha"] = alpha
    ds.attrs["true_params"] = json.dumps(truth)
    ds.attrs["family"] = family
    return ds
