"""Formulas (fixest's syntax) evaluated on the named-dim variables.

* every construct (log, exp, sqrt, C(), I(), x:z and x*z across dims, a dim's coordinate,
  offset(), -1, effects after |) gives the same fit as the explicit call with the derived
  variables built by hand (1e-10), and keeps each term on its own dims;
* formula fits of long tables equal pyfixest's ``fepois``/``feols`` with the same formula on the
  same rows (coefficients 1e-6, standard errors 1e-5 where both apply the same corrections),
  with and without effects, on a simulated table and on fixest's real trade panel;
* unknown names, functions and mixed arguments are clear errors.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import TRADE

import daskglm as dg
from daskglm.frontend.formula import apply_formula, parse_formula

pf = pytest.importorskip("pyfixest")


def make_panel(seed: int = 0, missing: float = 0.1) -> xr.Dataset:
    """A 3-D gravity-like Poisson panel at real magnitudes: distances in km, years as calendar
    years, a region code per exporter, an exposure on (exporter, year), missing cells."""
    rng = np.random.default_rng(seed)
    ni, nj, nk = 16, 12, 6
    ds = xr.Dataset(
        coords={
            "i": [f"ex{a:02d}" for a in range(ni)],
            "j": [f"im{a:02d}" for a in range(nj)],
            "k": np.arange(2001, 2001 + nk),
        }
    )
    ds["x"] = (("i", "j", "k"), rng.normal(size=(ni, nj, nk)))
    ds["dist"] = (("i", "j"), rng.uniform(50.0, 15000.0, size=(ni, nj)))
    ds["zi"] = (("i",), rng.normal(1.0, 0.5, size=ni))
    ds["wj"] = (("j",), rng.normal(size=nj))
    ds["region"] = (("i",), rng.integers(0, 3, size=ni).astype(np.int64))
    ds["e"] = (("i", "k"), rng.uniform(1.0, 4.0, size=(ni, nk)))
    eta = (
        2.0
        + 0.3 * ds.x
        - 0.4 * np.log(ds.dist / 1000)
        + 0.2 * ds.zi * ds.wj
        + 0.25 * (ds.region == 1)
        + 0.1 * ds.x * ds.zi
        + np.log(ds.e)
    ).transpose("i", "j", "k")
    y = rng.poisson(np.exp(eta.values)).astype(float)
    y[rng.uniform(size=y.shape) < missing] = np.nan
    ds["y"] = (("i", "j", "k"), y)
    ds["g"] = (("i", "j", "k"), eta.values + rng.normal(size=y.shape))
    return ds


def derived(ds: xr.Dataset) -> xr.Dataset:
    """The formula's derived variables built by hand."""
    return ds.assign(
        ld=np.log(ds.dist),
        sd=np.sqrt(ds.dist),
        ez=np.exp(ds.zi),
        zw=ds.zi * ds.wj,
        xz=ds.x * ds.zi,
        x2=ds.x**2,
        lk=np.log(ds.k).reset_coords(drop=True),
        kk=ds.k.astype(float).reset_coords(drop=True),
        le=np.log(ds.e),
        r0=(ds.region == 0).astype(float),
        r1=(ds.region == 1).astype(float),
        r2=(ds.region == 2).astype(float),
    )


# (formula, explicit y, explicit x, keyword arguments of the explicit fit, family)
CASES = {
    "log": ("y ~ x + log(dist)", "y", ["x", "ld"], {}, "poisson"),
    "no_intercept": ("y ~ x + log(dist) - 1", "y", ["x", "ld"], {"intercept": False}, "poisson"),
    "zero": ("y ~ 0 + x + sqrt(dist) + exp(zi)", "y", ["x", "sd", "ez"], {"intercept": False}, "poisson"),
    "C": ("y ~ x + C(region)", "y", ["x", "r1", "r2"], {}, "poisson"),
    "C_full": ("y ~ C(region) + x - 1", "y", ["r0", "r1", "r2", "x"], {"intercept": False}, "poisson"),
    "I": ("y ~ x + I(x**2)", "y", ["x", "x2"], {}, "poisson"),
    "cross_dims": ("y ~ x + zi:wj", "y", ["x", "zw"], {}, "poisson"),
    "star": ("y ~ x*zi", "y", ["x", "zi", "xz"], {}, "poisson"),
    "dim_coord": ("y ~ x + log(k)", "y", ["x", "lk"], {}, "poisson"),
    "dim_bare": ("y ~ x + k", "y", ["x", "kk"], {}, "poisson"),
    "offset": ("y ~ x + log(dist) + offset(log(e))", "y", ["x", "ld"], {"offset": "le"}, "poisson"),
    "gaussian": ("g ~ x + log(dist) + C(region) + zi:wj", "g", ["x", "ld", "r1", "r2", "zw"], {}, "gaussian"),
    "fe": (
        "y ~ x + log(dist) + zi:wj | i^k + j",
        "y",
        ["x", "ld", "zw"],
        {"fe": [("i", "k"), "j"]},
        "poisson",
    ),
    "fe_offset": (
        "y ~ x + I(x**2) + offset(log(e)) | j^k + i",
        "y",
        ["x", "x2"],
        {"fe": [("j", "k"), "i"], "offset": "le"},
        "poisson",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_formula_equals_the_explicit_fit(case):
    """The formula fit and the explicit fit of the derived variables agree to 1e-10."""
    formula, y, x, kwargs, family = CASES[case]
    ds = make_panel()
    res = dg.fit(ds, formula, family=family, progress=False, tol=1e-12)
    ref = dg.fit(derived(ds), y, x, family, progress=False, tol=1e-12, **kwargs)
    assert len(res.params) == len(ref.params)
    np.testing.assert_allclose(res.params.to_numpy(), ref.params.to_numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.bse.to_numpy(), rtol=1e-10)
    assert res.llf == pytest.approx(ref.llf, rel=1e-12)
    assert res.nobs == ref.nobs


def test_names_and_dims_of_the_terms():
    """Parameter names as fixest/pyfixest print them; each derived variable on its own dims."""
    ds = make_panel()
    f = "y ~ x + log(dist) + C(region) + I(x**2) + zi:wj + log(k) + offset(log(e)) | i^k + j"
    out, y, x, fe, offset, intercept = apply_formula(ds, f)
    assert (y, fe, offset, intercept) == ("y", "i^k + j", "offset(log(e))", True)
    assert x == ["x", "log(dist)", "C(region)", "I(x ** 2)", "log(k)", "zi:wj"]
    assert out["log(dist)"].dims == ("i", "j")
    assert out["zi:wj"].dims == ("i", "j")
    assert out["log(k)"].dims == ("k",)
    assert out["offset(log(e))"].dims == ("i", "k")
    assert out["C(region)"].dims == ("i", "C(region)__level")
    assert list(out["C(region)"]["C(region)__level"].values) == ["T.1", "T.2"]
    assert "log(dist)" not in ds  # the user's Dataset is left alone
    res = dg.fit(ds, f.split("|")[0], family="poisson", progress=False)
    assert list(res.params.index) == [
        "Intercept",
        "x",
        "log(dist)",
        "C(region)[T.1]",
        "C(region)[T.2]",
        "I(x ** 2)",
        "log(k)",
        "zi:wj",
    ]


def test_categories_with_string_labels_and_too_many_levels():
    """C() of string labels names the dummies by label; a variable with more levels than
    MAX_LEVELS is refused and pointed to fixed effects."""
    ds = make_panel()
    ds["rname"] = xr.DataArray(np.array(["north", "south", "west"])[ds["region"].values], dims="i")
    a = dg.fit(ds, "y ~ x + C(rname)", family="poisson", progress=False, tol=1e-12)
    b = dg.fit(ds, "y ~ x + C(region)", family="poisson", progress=False, tol=1e-12)
    assert list(a.params.index) == ["Intercept", "x", "C(rname)[T.south]", "C(rname)[T.west]"]
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="distinct values.*fixed effect"):
        dg.fit(ds, "y ~ C(x)", family="poisson")


def test_a_zarr_store_stays_lazy(tmp_path):
    """On a dask-backed store the derived variables are lazy and the fit equals the in-memory one."""
    ds = make_panel()
    path = str(tmp_path / "p.zarr")
    ds.chunk({"i": 8}).to_zarr(path, mode="w")
    out = apply_formula(path, "y ~ x + log(dist) + zi:wj + C(region)")[0]
    assert all(out[v].chunks is not None for v in ("log(dist)", "zi:wj", "C(region)"))
    f = "y ~ x + log(dist) + zi:wj + C(region) + offset(log(e))"
    a = dg.fit(path, f, family="poisson", progress=False, tol=1e-12)
    b = dg.fit(ds, f, family="poisson", progress=False, tol=1e-12)
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=1e-10)


def to_long(ds: xr.Dataset) -> pd.DataFrame:
    """The long table of the panel's observed cells, every variable as a column."""
    df = ds[["y", "g", "x"]].to_dataframe().reset_index()
    df = df[df["y"].notna()]
    for v in ("dist", "zi", "wj", "region", "e"):
        df = df.merge(ds[v].to_dataframe().reset_index(), on=list(ds[v].dims))
    return df.sort_values(["i", "j", "k"]).reset_index(drop=True)


PYFIXEST = {
    "poisson": ("y ~ x + log(dist) + C(region) + I(x**2) + zi:wj", "fepois"),
    "poisson_fe": ("y ~ x + log(dist) + zi:wj + x:zi | i^k + j", "fepois"),
    "gaussian": ("g ~ x + log(dist) + C(region) + zi:wj", "feols"),
    "gaussian_fe": ("g ~ x + log(dist) + zi:wj | i^k + j^k", "feols"),
    "gaussian_no_intercept": ("g ~ C(region) + x + log(dist) - 1", "feols"),
    "poisson_no_intercept": ("y ~ 0 + x + log(dist) + I(zi**2) + exp(wj)", "fepois"),
}


@pytest.mark.parametrize("case", list(PYFIXEST))
def test_long_table_formula_equals_pyfixest(case):
    """dg.fit(table, formula, dims=) equals pyfixest with the same formula on the same rows."""
    formula, fn = PYFIXEST[case]
    df = to_long(make_panel(seed=4))
    family = "poisson" if fn == "fepois" else "gaussian"
    res = dg.fit(df, formula, family=family, dims=["i", "j", "k"], progress=False, tol=1e-12)
    ref = getattr(pf, fn)(formula, data=df, vcov="iid")
    assert list(res.params.index) == [n for n in ref.coef().index]
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-6, atol=1e-8)
    if "|" in formula:  # with effects daskglm applies pyfixest's small-sample corrections
        np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)
    assert res.nobs == ref._N


@pytest.mark.skipif(not os.path.exists(TRADE), reason="the shared fixest trade panel is absent")
def test_trade_gravity_formula_on_the_long_table():
    """fixest's gravity example straight from its real long table: log(dist_km) = -1.52787
    (fixest's vignette), equal to pyfixest's fepois with the same formula and clusters."""
    trade = pd.read_csv(TRADE)
    f = "Euros ~ log(dist_km) | Origin + Destination + Product + Year"
    res = dg.fit(
        trade,
        f,
        family="poisson",
        dims=["Origin", "Destination", "Product", "Year"],
        cov_type="cluster",
        cluster="Origin",
        progress=False,
    )
    assert res.params["log(dist_km)"] == pytest.approx(-1.52787, abs=5e-6)
    ref = pf.fepois(f, data=trade, vcov={"CRV1": "Origin"})
    np.testing.assert_allclose(res.params.to_numpy(), ref.coef().to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("cluster", ["i", "i^j", "i + j", ["i", "j"]])
def test_formula_fits_take_fixest_cluster_strings(cluster):
    """cluster= in fixest's spellings with a formula, against pyfixest's CRV1."""
    df = to_long(make_panel(seed=5))
    f = "y ~ x + log(dist) | i^k + j"
    res = dg.fit(
        df, f, family="poisson", dims=["i", "j", "k"], cov_type="cluster", cluster=cluster, progress=False
    )
    spec = "+".join(cluster) if isinstance(cluster, list) else cluster.replace(" ", "")
    ref = pf.fepois(f, data=df.assign(ij=df["i"] + "_" + df["j"]), vcov={"CRV1": spec.replace("i^j", "ij")})
    np.testing.assert_allclose(res.bse.to_numpy(), ref.se().to_numpy(), rtol=1e-5)


def test_unknown_names_are_errors_with_a_suggestion():
    ds = make_panel()
    with pytest.raises(KeyError, match=r"'distt' is not a variable.*did you mean 'dist'.*'zi'"):
        dg.fit(ds, "y ~ x + log(distt)", family="poisson")
    with pytest.raises(KeyError, match=r"'yy' is not a variable.*did you mean 'y'"):
        dg.fit(ds, "yy ~ x", family="poisson")
    with pytest.raises(ValueError, match=r"unknown function 'lgo'.*log"):
        dg.fit(ds, "y ~ lgo(dist)", family="poisson")
    with pytest.raises(TypeError, match="formula names the covariates.*family="):
        dg.fit(ds, "y ~ x", "poisson")
    with pytest.raises(TypeError, match="has effects after"):
        dg.fit(ds, "y ~ x | i", family="poisson", fe="j")
    with pytest.raises(ValueError, match="not a panel dim"):
        dg.fit(ds, "y ~ x | region", family="poisson")
    with pytest.raises(ValueError, match="C\\(\\)"):
        parse_formula("y ~ C(region):x")
    with pytest.raises(ValueError, match="'\\|'"):
        parse_formula("y ~ x | i | j")
    with pytest.raises(ValueError, match="formula"):
        parse_formula("y ~ x +")
    df = to_long(make_panel())
    with pytest.raises(ValueError, match="did you mean 'dist'"):
        dg.fit(df, "y ~ log(distt)", family="poisson", dims=["i", "j", "k"])


def test_cli_fit_with_a_formula(tmp_path, capsys):
    from daskglm.api.cli import main

    ds = make_panel()
    path = str(tmp_path / "p.zarr")
    ds.to_zarr(path, mode="w")
    f = "y ~ x + log(dist) + zi:wj | i^k + j"
    out_json = str(tmp_path / "r.json")
    code = main(["fit", path, "--formula", f, "--family", "poisson", "--no-progress", "--out", out_json])
    assert code == 0
    ref = dg.fit(ds, f, family="poisson", progress=False)
    with open(out_json) as fh:
        out = json.load(fh)
    np.testing.assert_allclose(list(out["params"].values()), ref.params.to_numpy(), rtol=1e-8)
    assert list(out["params"]) == ["x", "log(dist)", "zi:wj"]
    assert main(["fit", path, "--formula", f, "--y", "y"]) == 2
    assert "drop --y/--x" in capsys.readouterr().err
    assert main(["fit", path]) == 2
    assert "--formula" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fit", path, "--formula", "y ~ log(dst)", "--no-progress"]) == 2
    assert "did you mean 'dist'" in capsys.readouterr().err


def test_predict_on_new_data_rebuilds_the_formula_terms():
    """predict(new data) builds the formula's covariates (C() with the fitted levels, offsets,
    a dim's coordinate) from the new data: equal to the fitted panel's predictions there."""
    ds = make_panel()
    f = "y ~ x + log(dist) + C(region) + zi:wj + k + offset(log(e))"
    res = dg.fit(ds, f, family="poisson", progress=False)
    sub = ds.drop_vars("y").isel(i=slice(3, 9))  # region takes fewer values here
    new = res.predict(sub).compute()
    old = res.predict().isel(i=slice(3, 9)).compute()
    np.testing.assert_allclose(new.values, old.values, rtol=1e-12)
    fe = dg.fit(ds, "y ~ x + log(dist) | i^k + j", family="poisson", progress=False)
    np.testing.assert_allclose(
        fe.predict(sub).compute().values, fe.predict().isel(i=slice(3, 9)).compute().values, rtol=1e-12
    )
    bad = sub.assign(region=sub["region"] + 7)
    with pytest.raises(ValueError, match="not in the fitted data"):
        res.predict(bad)


def test_long_table_keeps_the_other_inputs_of_the_fit():
    """A long table read for a formula keeps the exposure, weights and trials columns too;
    exposure= equals offset(log(.)) in the formula, and a binomial with trials= equals the
    explicit fit."""
    df = to_long(make_panel(seed=2))
    df["w"] = 1.0 + (df["k"] % 2)
    df["n"] = df["y"] + 3.0
    dims = ["i", "j", "k"]
    a = dg.fit(
        df, "y ~ x + log(dist)", family="poisson", dims=dims, exposure="e", weights="w", progress=False
    )
    b = dg.fit(
        df, "y ~ x + log(dist) + offset(log(e))", family="poisson", dims=dims, weights="w", progress=False
    )
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=1e-10)
    fam = dg.Binomial(trials="n")
    c = dg.fit(df, "y ~ x + log(dist)", family=fam, dims=dims, progress=False)
    ds = dg.from_long(df, dims, y="y")
    d = dg.fit(ds.assign(ld=np.log(ds["dist"])), "y", ["x", "ld"], fam, progress=False)
    np.testing.assert_allclose(c.params.to_numpy(), d.params.to_numpy(), rtol=1e-10)


def test_a_variable_may_share_a_function_name():
    """``exp`` (experience, a common wage-equation variable) read as a variable, called as a function."""
    ds = make_panel()
    ds["exp"] = ds["zi"] * 10
    a = dg.fit(ds, "y ~ x + exp + I(exp**2) + exp(zi)", family="poisson", progress=False, tol=1e-12)
    d = ds.assign(e1=ds["exp"], e2=ds["exp"] ** 2, e3=np.exp(ds["zi"]))
    b = dg.fit(d, "y", ["x", "e1", "e2", "e3"], "poisson", progress=False, tol=1e-12)
    assert list(a.params.index) == ["Intercept", "x", "exp", "I(exp ** 2)", "exp(zi)"]
    np.testing.assert_allclose(a.params.to_numpy(), b.params.to_numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="both as a function and a variable"):
        dg.fit(ds, "y ~ exp(exp)", family="poisson")
    with pytest.raises(ValueError, match="is a function, call it"):
        dg.fit(make_panel(), "y ~ x + sqrt", family="poisson")


def test_constant_terms_are_errors_that_say_why():
    """A term that evaluates to one number: a constant (the intercept is the constant term), or
    a constant that is not a finite number (the log of a negative constant), each named."""
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"y": (("i", "j"), rng.poisson(2.0, (5, 4)).astype(float)), "x": (("i",), np.arange(5.0)), "v": -2.0}
    )
    with pytest.raises(ValueError, match=r"'log\(v\)' is nan \(a constant that is not a finite number"):
        dg.fit(ds, "y ~ x + log(v)", family="poisson")
    with pytest.raises(ValueError, match="the term 'v' is a constant; the intercept is the constant term"):
        dg.fit(ds, "y ~ x + v", family="poisson")
