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

import os
import warnings

import numpy as np
import pandas as pd
import pytest

import daskglm as dg
from daskglm.api.cli import main as cli_main

TRADE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "fixest-trade", "trade.csv")
DIMS = ["Origin", "Destination", "Product", "Year"]
needs_trade = pytest.mark.skipif(not os.path.exists(TRADE), reason="the fixest trade panel is absent")


@pytest.fixture(scope="module")
def trade() -> pd.DataFrame:
    return pd.read_csv(TRADE)


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dg.fit(*args, progress=False, **kwargs)


# ---------------------------------------------------------------- 4: pandas index in parquet
@needs_trade
def test_parquet_pandas_index_is_not_a_column(trade, tmp_path):
    sub = trade[trade.Year > 2010]  # a filtered frame: its index is not a RangeIndex
    path = tmp_path / "sub.parquet"
    sub.to_parquet(path)
    ds = dg.from_long(path, dims=DIMS)
    assert sorted(ds.data_vars) == ["Euros", "dist_km"]
    assert ds.attrs["n_rows"] == len(sub)
    out = tmp_path / "sub.zarr"
    assert cli_main(["ingest", str(path), "--dims", ",".join(DIMS), "--out", str(out), "--no-progress"]) == 0
    import xarray as xr

    assert sorted(xr.open_zarr(out).data_vars) == ["Euros", "dist_km"]
    # a named index is data the user gave a name: kept as a column by that name
    named = sub.rename_axis("row_id")
    named.to_parquet(tmp_path / "named.parquet")
    ds = dg.from_long(tmp_path / "named.parquet", dims=DIMS)
    assert sorted(ds.data_vars) == ["Euros", "dist_km", "row_id"]
    # the same through a pyarrow Table read from the file
    import pyarrow.parquet as pq

    ds = dg.from_long(pq.read_table(path), dims=DIMS)
    assert sorted(ds.data_vars) == ["Euros", "dist_km"]
