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

from ..kernels.families import Family
from .registry import FAMILIES, family_class, resolve_family

__all__ = ["default_blocks", "simulate_panel", "SIM_FAMILIES"]

#: the registered families that can draw responses (:meth:`~daskglm.kernels.families.Family.sample`)
SIM_FAMILIES = tuple(name for name, cls in FAMILIES.items() if cls.sample is not Family.sample)


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


def simulate_panel(
    sizes: dict[str, int],
    family: str | Family = "poisson",
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
    family : str or Family
        One of :data:`SIM_FAMILIES` (or an alias), or an instance; the family draws the
        responses (:meth:`~daskglm.kernels.families.Family.sample`) and sets the true intercept
        (``sim_intercept``).
    blocks : dict, optional
        ``name -> (dims, n_columns)``: each block is stored as variables ``name_1`` ...
        ``name_n``; defaults to :func:`default_blocks`.
    chunks : dict, optional
        Chunk length per dim (defaults to about 2**20 cells per chunk).
    seed : int
        Seed of everything random.
    alpha : float
        NB2 dispersion (given to the families that take an ``alpha`` option, by name).
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
    if isinstance(family, str):
        cls = family_class(family)
        options = {k: v for k, v in {"alpha": alpha}.items() if k in [o.name for o in cls.options]}
        fam = resolve_family(family, options)
    else:
        fam = resolve_family(family)
    if type(fam).sample is Family.sample:
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
    intercept = fam.sim_intercept
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
    if exposure and fam.sim_exposure:
        edims = dims[:2]
        ex = rs.uniform(0.5, 2.0, size=tuple(sizes[d] for d in edims), chunks=tuple(cmap[d] for d in edims))
        ds["exposure"] = (edims, ex.astype(dtype))
        aux["exposure"] = ex[tuple(slice(None) if d in edims else None for d in dims)]
    for role in fam.aux_roles:
        if role in fam.sim_outputs:
            continue
        # an auxiliary input the family does not draw (the binomial's trials): whole numbers
        # 1..19 over the first dim(s)
        tdims = dims[: max(1, len(dims) - 1)]
        tr = rs.randint(1, 20, size=tuple(sizes[d] for d in tdims), chunks=tuple(cmap[d] for d in tdims))
        ds[role] = (tdims, tr.astype(dtype))
        aux[role] = tr[tuple(slice(None) if d in tdims else None for d in dims)].astype(np.float64)
    outputs = fam.sim_outputs
    names = list(aux)

    def draw(eta_b, *aux_b, block_id=None):
        rng = np.random.default_rng([seed, 104729, *block_id])
        a = {k: np.broadcast_to(v, eta_b.shape) for k, v in zip(names, aux_b, strict=True)}
        sample = fam.sample(rng, eta_b, a)
        out = np.stack([sample[k] for k in outputs])
        if missing_fraction > 0:
            out[0][rng.random(eta_b.shape) < missing_fraction] = np.nan
        return out

    drawn = da.map_blocks(
        draw,
        eta,
        *[aux[k] for k in names],
        new_axis=0,
        chunks=((len(outputs),),) + full,
        dtype=np.float64,
    )
    for k, name in enumerate(outputs):
        ds[name] = (dims, drawn[k].astype(dtype))
    if fam.ancillary_name is not None:
        truth[fam.ancillary_name] = fam.ancillary(np.zeros(0))
    ds.attrs["true_params"] = json.dumps(truth)
    ds.attrs["family"] = fam.name
    return ds
