"""Test helpers: small random panels, and the same model on the expanded design for statsmodels.

The expansion is the independent reference: it broadcasts every covariate to the full grid in
pandas/numpy (the thing daskglm never does) and hands the long table to statsmodels. Frequency
weights are expanded by *repeating rows*, so weighted fits are checked against the definition
of a frequency weight, not against another weighting implementation.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import xarray as xr

#: fixest's real 4-D trade panel in the shared folder beside the repo (tests skip without it)
TRADE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fixest-trade", "trade.csv")
#: its key columns, as panel dims
TRADE_DIMS = ["Origin", "Destination", "Product", "Year"]
#: skip a test when the shared trade panel is absent
needs_trade = pytest.mark.skipif(not os.path.exists(TRADE), reason="the fixest trade panel is absent")


def quiet_fit(*args, **kwargs):
    """``dg.fit`` without its warnings and progress bar."""
    import daskglm as dg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dg.fit(*args, progress=False, **kwargs)


DIM_SETS = {
    1: {"obs": 300},
    2: {"i": 12, "j": 15},
    3: {"i": 7, "j": 6, "k": 8},
    4: {"a": 4, "b": 3, "c": 5, "d": 6},
}


def covariate_layout(dims: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], int | None]]:
    """(name, dims, n_features) for a mix of blocks over ``dims`` incl. a feature-dim one."""
    out = [("x_full", dims, None), ("x_full2", dims, None)]
    if len(dims) >= 2:
        out.append(("x_" + dims[0], (dims[0],), None))
        out.append(("x_" + "".join(dims[:2]), dims[:2], None))
        out.append(("x_feat", (dims[-1],), 2))
    if len(dims) >= 3:
        out.append(("x_" + dims[0] + dims[2], (dims[0], dims[2]), None))
        out.append(("x_" + dims[1] + dims[2], (dims[1], dims[2]), None))
    return out


def make_panel(
    ndim: int,
    family: str,
    *,
    seed: int = 0,
    offset: bool = False,
    exposure: bool = False,
    weights: bool = False,
    missing: float = 0.0,
) -> tuple[xr.Dataset, list[str]]:
    """A small numpy-backed panel with response ``y`` drawn from ``family``."""
    rng = np.random.default_rng(seed)
    sizes = DIM_SETS[ndim]
    dims = tuple(sizes)
    coords = {d: np.arange(n) * 10 + 1 for d, n in sizes.items()}
    ds = xr.Dataset(coords=coords)
    ds = ds.assign_coords(feature=["u", "v"])
    eta = xr.zeros_like(xr.DataArray(np.zeros(tuple(sizes.values())), dims=dims, coords=coords))
    names = []
    for name, vdims, nf in covariate_layout(dims):
        shape = tuple(sizes[d] for d in vdims) + ((nf,) if nf else ())
        vd = vdims + (("feature",) if nf else ())
        ds[name] = (vd, rng.normal(size=shape))
        coef = rng.uniform(-0.3, 0.3, size=nf) if nf else rng.uniform(-0.3, 0.3)
        eta = (
            eta + (ds[name] * xr.DataArray(coef, dims="feature")).sum("feature")
            if nf
            else eta + coef * ds[name]
        )
        names.append(name)
    eta = eta.transpose(*dims) + (0.5 if family != "binomial" else 0.0)
    shape = tuple(sizes.values())
    if offset:
        ds["off"] = ((dims[0],), rng.uniform(-0.3, 0.3, size=sizes[dims[0]]))
        eta = eta + ds["off"]
    if exposure:
        edims = dims[-2:] if ndim >= 2 else dims
        ds["expo"] = (edims, rng.uniform(0.5, 2.0, size=tuple(sizes[d] for d in edims)))
        eta = eta + np.log(ds["expo"])
    eta = eta.transpose(*dims).values
    if family == "gaussian":
        y = eta + rng.normal(size=shape)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(float)
    elif family in ("negative_binomial", "nb_fixed"):
        mu = np.exp(eta)
        y = rng.poisson(rng.gamma(1 / 0.7, 0.7 * mu)).astype(float)
    elif family == "binomial":
        tdims = dims[:1]
        ds["trials"] = (tdims, rng.integers(1, 12, size=sizes[dims[0]]).astype(float))
        m = np.broadcast_to(ds["trials"].values.reshape((-1,) + (1,) * (ndim - 1)), shape)
        y = rng.binomial(m.astype(int), 1 / (1 + np.exp(-eta))).astype(float)
    elif family == "exponential":
        t = rng.exponential(np.exp(-eta))
        c = rng.exponential(2 * np.exp(-eta))
        y = np.minimum(t, c)
        ds["event"] = (dims, (t <= c).astype(float))
    else:
        raise ValueError(family)
    if missing:
        y[rng.random(shape) < missing] = np.nan
    ds["y"] = (dims, y)
    if weights:
        ds["w"] = (dims, rng.integers(1, 4, size=shape).astype(float))
    return ds, names


def expand(ds: xr.Dataset, x: list[str], extra: list[str] = ()) -> pd.DataFrame:
    """The long table: one row per cell of ``y``, covariates broadcast, features as columns."""
    dims = ds["y"].dims
    cols = {"y": ds["y"].values.ravel()}
    for name in list(x) + list(extra):
        da = ds[name]
        feat = [d for d in da.dims if d not in dims]
        if feat:
            for lab in da[feat[0]].values:
                v = da.sel({feat[0]: lab}).broadcast_like(ds["y"]).transpose(*dims)
                cols[f"{name}[{lab}]"] = v.values.ravel()
        else:
            cols[name] = da.broadcast_like(ds["y"]).transpose(*dims).values.ravel()
    return pd.DataFrame(cols)


def statsmodels_fit(
    family: str,
    df: pd.DataFrame,
    xcols: list[str],
    *,
    offset=None,
    exposure=None,
    weights=None,
    trials=None,
    event=None,
    alpha=None,
):
    """Fit the reference model with statsmodels on the long table (rows with y observed)."""
    df = df[np.isfinite(df["y"])].copy()
    if weights is not None:
        df = df.loc[df.index.repeat(df[weights].astype(int))]
    X = sm.add_constant(df[xcols], has_constant="add").rename(columns={"const": "Intercept"})
    off = df[offset].to_numpy() if offset else None
    expo = df[exposure].to_numpy() if exposure else None
    if family == "gaussian":
        return sm.GLM(df["y"], X, family=sm.families.Gaussian(), offset=off).fit(tol=1e-13)
    if family == "poisson":
        return sm.GLM(df["y"], X, family=sm.families.Poisson(), offset=off, exposure=expo).fit(tol=1e-13)
    if family == "binomial":
        endog = np.column_stack([df["y"], df[trials] - df["y"]])
        return sm.GLM(endog, X, family=sm.families.Binomial(), offset=off).fit(tol=1e-13)
    if family == "nb_fixed":
        # observed-information standard errors (statsmodels' Newton), as daskglm reports them
        fam = sm.families.NegativeBinomial(alpha=alpha)
        mod = sm.GLM(df["y"], X, family=fam, offset=off, exposure=expo)
        return mod.fit(start_params=mod.fit(tol=1e-13).params, method="newton", tol=1e-13, maxiter=100)
    if family == "negative_binomial":
        mod = sm.NegativeBinomial(df["y"], X, loglike_method="nb2", offset=off, exposure=expo)
        start = np.append(
            sm.GLM(df["y"], X, family=sm.families.Poisson(), offset=off, exposure=expo).fit().params, 0.5
        )
        return mod.fit(start_params=start, method="newton", maxiter=200, tol=1e-14, disp=0)
    if family == "exponential":
        # the duality of the seed note: Poisson in the event indicator with offset log(time)
        o = np.log(df["y"].to_numpy()) + (off if off is not None else 0.0)
        return sm.GLM(df[event], X, family=sm.families.Poisson(), offset=o).fit(tol=1e-13)
    raise ValueError(family)
