"""The per-iteration progress line and logging."""

from __future__ import annotations

import logging

from helpers import make_panel

import daskglm as dg


def test_progress_line_shows_iterations(capsys):
    ds, x = make_panel(2, "poisson", seed=61)
    res = dg.fit(ds, "y", x, "poisson", progress=True)
    err = capsys.readouterr().err
    assert "daskglm newton" in err
    for key in ("ll=", "step=", "grad=", f"passes={res.history['passes'].iloc[-1]}"):
        assert key in err


def test_progress_false_is_silent_and_rows_are_logged(capsys, caplog):
    ds, x = make_panel(2, "poisson", seed=61)
    with caplog.at_level(logging.DEBUG, logger="daskglm"):
        res = dg.fit(ds, "y", x, "poisson", progress=False)
    assert capsys.readouterr().err == ""
    rows = [r.getMessage() for r in caplog.records if r.getMessage().startswith("iteration ")]
    assert len(rows) == len(res.history)
    assert any("computing on dask's threaded scheduler" in r.getMessage() for r in caplog.records)
