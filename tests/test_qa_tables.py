"""QA defects of long tables, formulas and predictions (QA report of 2026-11-24, items 3, 4, 7, 10).

* 3: ``C(col)`` on a string or pandas-categorical column of a long table (DataFrame, parquet, CSV)
  fits, with the coefficients of pyfixest on the trade panel; a plain string column keeps its error.
* 4: a parquet file's unnamed pandas index (``__index_level_0__``) is not a column of the table
  (``from_long``, ``daskglm ingest``); a named index stays a column by its name.
* 7: ``res.predict(df)`` of a fit from a DataFrame equals pyfixest's ``predict(newdata=)`` row by
  row; ``dg.fit(df, formula)`` without ``dims=`` asks for ``dims=``.
* 10: ``summary()`` keeps its columns apart for large values; ``y`` among its own covariates is
  refused; unseen fixed-effect levels in ``predict(new)`` warn with the effect and the count.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from helpers import TRADE, TRADE_DIMS, needs_trade, quiet_fit

import daskglm as dg
from daskglm.api.cli import main as cli_main


@pytest.fixture(scope="module")
def trade() -> pd.DataFrame:
    return pd.read_csv(TRADE)


# ---------------------------------------------------------------- 4: pandas index in parquet
@needs_trade
def test_parquet_pandas_index_is_not_a_column(trade, tmp_path):
    sub = trade[trade.Year > 2010]  # a filtered frame: its index is not a RangeIndex
    path = tmp_path / "sub.parquet"
    sub.to_parquet(path)
    ds = dg.from_long(path, dims=TRADE_DIMS)
    assert sorted(ds.data_vars) == ["Euros", "dist_km"]
    assert ds.attrs["n_rows"] == len(sub)
    out = tmp_path / "sub.zarr"
    assert (
        cli_main(["ingest", str(path), "--dims", ",".join(TRADE_DIMS), "--out", str(out), "--no-progress"])
        == 0
    )
    import xarray as xr

    assert sorted(xr.open_zarr(out).data_vars) == ["Euros", "dist_km"]
    # a named index is data the user gave a name: kept as a column by that name
    named = sub.rename_axis("row_id")
    named.to_parquet(tmp_path / "named.parquet")
    ds = dg.from_long(tmp_path / "named.parquet", dims=TRADE_DIMS)
    assert sorted(ds.data_vars) == ["Euros", "dist_km", "row_id"]
    # the same through a pyarrow Table read from the file
    import pyarrow.parquet as pq

    ds = dg.from_long(pq.read_table(path), dims=TRADE_DIMS)
    assert sorted(ds.data_vars) == ["Euros", "dist_km"]


# ---------------------------------------------------------------- 3: C() on label columns
def _regions(df: pd.DataFrame) -> pd.DataFrame:
    region = np.where(df.Origin < "F", "north", np.where(df.Origin < "L", "mid", "south"))
    return df.assign(region=region)


@needs_trade
def test_c_of_a_string_or_category_column_of_a_long_table_matches_pyfixest(trade, tmp_path):
    import pyfixest as pf

    df = _regions(trade)
    f = "Euros ~ log(dist_km) + C(region) | Destination"
    ref = pf.fepois(f, df).coef()  # pyfixest 0.60 on the same rows
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    tables = {
        "str": df,
        "category": df.assign(region=df.region.astype("category")),
        "parquet": tmp_path / "t.parquet",
        "csv": tmp_path / "t.csv",
    }
    for what, table in tables.items():
        r = quiet_fit(table, f, family="poisson", dims=TRADE_DIMS)
        assert list(r.params.index) == list(ref.index), what
        np.testing.assert_allclose(r.params.to_numpy(), ref.to_numpy(), rtol=1e-6, err_msg=what)
    # a pandas categorical's own order of categories (base level first, unused ones left out),
    # as formulaic and pyfixest take it, in memory and through parquet
    cats = df.assign(region=pd.Categorical(df.region, categories=["south", "north", "mid", "west"]))
    ref = pf.fepois(f, cats).coef()
    assert list(ref.index) == ["log(dist_km)", "C(region)[T.north]", "C(region)[T.mid]"]
    cats.to_parquet(tmp_path / "c.parquet")
    for table in (cats, tmp_path / "c.parquet"):
        r = quiet_fit(table, f, family="poisson", dims=TRADE_DIMS)
        assert list(r.params.index) == list(ref.index)
        np.testing.assert_allclose(r.params.to_numpy(), ref.to_numpy(), rtol=1e-6)
    # region is a property of Origin: placed on (Origin,), kept as its labels
    ds = dg.from_long(df, TRADE_DIMS, values=["Euros", "region"], categorical=["region"])
    assert ds.region.dims == ("Origin",)
    assert set(ds.region.values) == {"north", "mid", "south"}


def test_c_of_a_cell_varying_label_column_with_missing_values_matches_statsmodels():
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    long = pd.DataFrame([(i, t) for i in range(40) for t in range(15)], columns=["i", "t"])
    long["x"] = rng.normal(size=len(long))
    grade = rng.choice(["low", "mid", "top"], size=len(long)).astype(object)
    grade[rng.random(len(long)) < 0.05] = None  # missing labels: those cells are left out
    long["grade"] = grade
    eff = pd.Series({"low": 0.0, "mid": 0.4, "top": -0.3}).reindex(long.grade).fillna(0).to_numpy()
    long["y"] = rng.poisson(np.exp(0.5 + 0.3 * long.x + eff)).astype(float)
    r = quiet_fit(long, "y ~ x + C(grade)", family="poisson", dims=["i", "t"], missing="drop")
    s = smf.glm("y ~ x + C(grade)", long.dropna(), family=sm.families.Poisson()).fit(tol=1e-12)
    assert r.nobs == int(long.grade.notna().sum())
    assert sorted(r.params.index) == sorted(s.params.index)  # C(grade)[T.mid], C(grade)[T.top]
    np.testing.assert_allclose(r.params[s.params.index].to_numpy(), s.params.to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(r.bse[s.params.index].to_numpy(), s.bse.to_numpy(), rtol=1e-6)


def test_a_label_column_outside_c_keeps_its_error(tmp_path):
    long = pd.DataFrame({"i": [0, 0, 1, 1], "t": [0, 1, 0, 1], "y": [1.0, 2, 3, 4], "g": list("abab")})
    with pytest.raises(ValueError, match=r"value column 'g' is of dtype .*not numeric.*C\(g\)"):
        dg.fit(long, "y ~ g", family="poisson", dims=["i", "t"], progress=False)
    with pytest.raises(ValueError, match=r"value column 'g' is of dtype"):
        dg.from_long(long, ["i", "t"])
    with pytest.raises(ValueError, match=r"'g'.*hold labels.*zarr store"):
        dg.from_long(long, ["i", "t"], to=tmp_path / "g.zarr", categorical=["g"])


# ---------------------------------------------------------------- 7: DataFrames in predict and fit
@needs_trade
def test_predict_on_a_dataframe_matches_statsmodels_row_by_row(trade):
    import pyfixest as pf
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    df = trade.assign(Euros=trade.Euros.astype(float))
    f = "Euros ~ log(dist_km) | Origin + Destination + Product"
    r = quiet_fit(df, f, family="poisson", dims=TRADE_DIMS, tol=1e-12)
    dummies = "Euros ~ np.log(dist_km) + C(Origin) + C(Destination) + C(Product)"
    s = smf.glm(dummies, df, family=sm.families.Poisson()).fit(tol=1e-13)
    new = df.sample(300, random_state=1)
    new = new.assign(dist_km=new.dist_km * 1.5).drop(columns="Euros")  # covariates changed, no response
    got = r.predict(new)
    assert isinstance(got, pd.Series) and got.index.equals(new.index)
    ref = s.predict(new).to_numpy()
    np.testing.assert_allclose(got.to_numpy(), ref, rtol=1e-10)  # 1.2e-13 measured
    lin = r.predict(new, which="linear")
    np.testing.assert_allclose(lin.to_numpy(), np.log(ref), rtol=1e-10)
    # pyfixest's predict(newdata=) recovers its effects less exactly (7.8e-5 here, 3e-13 in sample)
    m = pf.fepois(f, df, iwls_tol=1e-12, fixef_tol=1e-12)
    np.testing.assert_allclose(got.to_numpy(), m.predict(newdata=new, type="response"), rtol=2e-4)
    # keys as index levels, and a pyarrow Table, give the same numbers
    np.testing.assert_allclose(r.predict(new.set_index(TRADE_DIMS)).to_numpy(), got.to_numpy(), rtol=1e-13)
    import pyarrow as pa

    np.testing.assert_allclose(
        r.predict(pa.Table.from_pandas(new, preserve_index=False)).to_numpy(), got.to_numpy(), rtol=1e-13
    )


@needs_trade
def test_predict_on_a_dataframe_with_a_label_column_matches_statsmodels(trade):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    df = _regions(trade)
    r = quiet_fit(df, "Euros ~ log(dist_km) + C(region)", family="poisson", dims=TRADE_DIMS)
    s = smf.glm("Euros ~ np.log(dist_km) + C(region)", df, family=sm.families.Poisson()).fit(tol=1e-12)
    new = df.sample(200, random_state=2).drop(columns="Euros")
    np.testing.assert_allclose(r.predict(new).to_numpy(), s.predict(new).to_numpy(), rtol=1e-7)
    # a row whose covariate is constant over the new rows is still a covariate (one row here)
    np.testing.assert_allclose(
        r.predict(new.iloc[:1]).to_numpy(), s.predict(new.iloc[:1]).to_numpy(), rtol=1e-7
    )


@needs_trade
def test_fit_of_a_dataframe_without_dims_asks_for_dims(trade):
    with pytest.raises(TypeError, match=r"long table .*pass dims=\[\.\.\.\].*dims=\['Origin', 'Destination'"):
        dg.fit(trade, "Euros ~ log(dist_km) | Origin + Destination", family="poisson")
    with pytest.raises(TypeError, match=r"long table .*pass dims="):
        dg.fit(trade, "Euros ~ log(dist_km)", family="poisson")
    with pytest.raises(TypeError, match=r"long table .*dims=\['Origin', 'Destination'"):  # no formula
        dg.fit(trade, "Euros", ["dist_km"], "poisson", fe="Origin + Destination")
    with pytest.raises(TypeError, match=r"long table \('/no/such/t.parquet'.*pass dims="):  # a path
        dg.fit("/no/such/t.parquet", "Euros ~ log(dist_km)", family="poisson")


@needs_trade
def test_unseen_fixed_effect_levels_in_predict_warn(trade):
    r = quiet_fit(
        trade, "Euros ~ log(dist_km) | Origin + Destination^Year", family="poisson", dims=TRADE_DIMS
    )
    new = trade.sample(50, random_state=3).drop(columns="Euros")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # levels all seen: no warning
        assert r.predict(new).notna().all()
    new.loc[new.index[:4], "Origin"] = "ZZ"
    new.loc[new.index[:4], "Year"] = 2031
    with pytest.warns(UserWarning) as caught:
        got = r.predict(new)
    msgs = [str(w.message) for w in caught]
    assert any("fixed effect 'Origin' has 1 level(s)" in m and "'ZZ'" in m for m in msgs), msgs
    n_dest = new.Destination.nunique()  # Destination^Year: every destination of the new data in 2031
    assert any(f"fixed effect 'Destination^Year' has {n_dest} level(s)" in m and "2031" in m for m in msgs)
    assert got.iloc[:4].isna().all() and got.iloc[4:].notna().all()


# ---------------------------------------------------------------- 10: summary layout, y among x
@needs_trade
def test_summary_keeps_large_values_apart_from_the_next_label(trade):
    import re

    import statsmodels.api as sm

    r = quiet_fit(trade, "Euros ~ log(dist_km)", family="poisson", dims=TRADE_DIMS)
    s = sm.GLM(trade.Euros, sm.add_constant(np.log(trade.dist_km)), family=sm.families.Poisson()).fit()
    assert abs(s.llf) > 1e11  # the QA's case: a 12-digit log-likelihood
    rf = quiet_fit(trade, "Euros ~ log(dist_km) | Origin + Destination", family="poisson", dims=TRADE_DIMS)
    labels = ["Panel dims", "converged", "iterations", "passes", "Sum of weights", "Df resid", "Deviance"]
    labels += ["Pseudo R2 (McFadden)", "BIC"]
    for res in (r, rf):
        text = res.summary()
        for label in labels:
            hit = re.search(rf"(.)(.){re.escape(label)}:", text)
            assert hit and hit.group(1) == hit.group(2) == " ", (label, text)
        llf = float(re.search(r"Log-likelihood: (\S+)", text).group(1))
        np.testing.assert_allclose(llf, res.llf, rtol=1e-12)
    np.testing.assert_allclose(
        float(re.search(r"Log-likelihood: (\S+)", r.summary()).group(1)), s.llf, rtol=1e-9
    )
    np.testing.assert_allclose(
        float(re.search(r"Deviance: (\S+)", r.summary()).group(1)), s.deviance, rtol=1e-5
    )


def test_the_response_among_its_own_covariates_is_refused():
    import xarray as xr

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 20))
    ds = xr.Dataset({"y": (("i", "t"), rng.poisson(np.exp(0.3 * x)).astype(float)), "x": (("i", "t"), x)})
    with pytest.raises(ValueError, match=r"response 'y' is also among the covariates.*remove 'y' from x="):
        dg.fit(ds, "y", ["x", "y"], "poisson", progress=False)
    with pytest.raises(ValueError, match=r"response 'y' is also among.*right-hand side of the formula"):
        dg.fit(ds, "y ~ x + y", family="poisson", progress=False)
    with pytest.raises(ValueError, match=r"response 'log1p\(y\)' is also among"):
        dg.fit(ds, "log1p(y) ~ log1p(y) + x", family="poisson", progress=False)


def test_predict_on_a_dataframe_with_offsets_and_exposure_matches_statsmodels():
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(0)
    d = pd.DataFrame([(i, t) for i in range(30) for t in range(12)], columns=["i", "t"])
    d["x"] = rng.normal(size=len(d))
    d["e"] = rng.uniform(1, 10, size=len(d))
    d["w"] = rng.uniform(1, 2, size=len(d))
    d["y"] = rng.poisson(np.exp(0.3 * d.x + d.w) * d.e).astype(float)
    new = d.sample(20, random_state=0).drop(columns="y")
    # a formula's offset(...) plus offset=
    r = quiet_fit(d, "y ~ x + offset(log(e))", family="poisson", dims=["i", "t"], offset="w")
    s = smf.glm("y ~ x", d, offset=np.log(d.e) + d.w, family=sm.families.Poisson()).fit(tol=1e-12)
    ref = s.predict(new, offset=np.log(new.e) + new.w).to_numpy()
    np.testing.assert_allclose(r.predict(new).to_numpy(), ref, rtol=1e-9)
    # explicit x= and exposure=
    r = quiet_fit(d, "y", ["x", "w"], "poisson", dims=["i", "t"], exposure="e")
    s = sm.GLM(d.y, sm.add_constant(d[["x", "w"]]), family=sm.families.Poisson(), exposure=d.e).fit(tol=1e-12)
    ref = s.predict(sm.add_constant(new[["x", "w"]], has_constant="add"), exposure=new.e).to_numpy()
    np.testing.assert_allclose(r.predict(new).to_numpy(), ref, rtol=1e-9)
    with pytest.raises(ValueError, match=r"predict\(\) lacks the column\(s\) \['e'\]"):
        r.predict(new.drop(columns="e"))
    with pytest.raises(ValueError, match=r"predict\(\) lacks the key column\(s\) \['t'\]"):
        r.predict(new.drop(columns="t"))


@needs_trade
def test_fixed_effects_fits_count_their_clusters(trade):
    f = "Euros ~ log(dist_km) | Product"
    for cluster, expect in [
        ("Origin", trade.Origin.nunique()),
        ("Origin^Year", len(trade[["Origin", "Year"]].drop_duplicates())),
        ("Year + Product", min(trade.Year.nunique(), trade.Product.nunique())),  # G: the smallest
    ]:
        r = quiet_fit(trade, f, family="poisson", dims=TRADE_DIMS, cov_type="cluster", cluster=cluster)
        assert r.n_clusters == expect, cluster
        assert f"({expect} clusters)" in r.summary()
