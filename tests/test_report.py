"""Results people read and show: tidy(), etable(), coefplot(), plot_convergence(), the CLI outputs.

* ``tidy`` against p-values and intervals recomputed with scipy from the estimates and SEs;
* ``etable`` against golden text and markdown written out here (values of fits checked
  against pyfixest in ``test_formula.py``), stars recomputed from the p-values by fixest's
  thresholds, LaTeX and HTML structure;
* plots: the PNG is written (signature, size), and the Figure's axes carry the expected tick
  labels, the error bars span the confidence intervals, the legend names the fits.
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
from scipy import stats
from test_formula import make_panel

import daskglm as dg
from daskglm.api.report import STARS

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def fits():
    ds = make_panel(seed=7)
    m1 = dg.fit(ds, "y ~ x + log(dist) + C(region)", family="poisson", progress=False)
    m2 = dg.fit(
        ds,
        "y ~ x + log(dist) + zi:wj | i^k + j",
        family="poisson",
        progress=False,
        cov_type="cluster",
        cluster="i + j",
    )
    m3 = dg.fit(ds, "g ~ x + log(dist)", family="gaussian", progress=False, cov_type="HC1")
    return m1, m2, m3


def test_tidy_against_scipy(fits):
    for res in fits:
        t = res.tidy(alpha=0.1)
        assert list(t.columns) == ["estimate", "std_error", "statistic", "p_value", "conf_low", "conf_high"]
        assert list(t.index) == list(res.params.index) and t.index.name == "term"
        est, se = res.params.to_numpy(), res.bse.to_numpy()
        np.testing.assert_allclose(t["statistic"], est / se, rtol=1e-14)
        np.testing.assert_allclose(t["p_value"], 2 * stats.norm.sf(np.abs(est / se)), rtol=1e-12, atol=1e-300)
        z = 1.6448536269514722  # the 95th percentile of the normal
        np.testing.assert_allclose(t["conf_low"], est - z * se, rtol=1e-12)
        np.testing.assert_allclose(t["conf_high"], est + z * se, rtol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        fits[0].tidy(alpha=5)


GOLDEN_TEXT = """\
                      (1)              (2)        (3)
-----------------------------------------------------
Dep. variable           y                y          g
-----------------------------------------------------
Intercept        5.658***                    5.872***
                  (0.065)                     (0.285)
x                0.388***         0.394***   0.349***
                  (0.010)          (0.016)    (0.033)
log(dist)       -0.392***        -0.414***  -0.418***
                  (0.007)          (0.008)    (0.033)
C(region)[T.1]   0.187***
                  (0.022)
C(region)[T.2]     -0.043
                  (0.025)
zi:wj                             0.195***
                                   (0.018)
-----------------------------------------------------
i^k                     -                x          -
j                       -                x          -
-----------------------------------------------------
Family            poisson          poisson   gaussian
Cov. type       nonrobust  cluster (i + j)        HC1
Observations        1,019            1,019      1,152
Log-likelihood  -3515.652        -2491.929  -1731.344
Pseudo R2           0.370            0.553      0.060
-----------------------------------------------------
Significance: *** p < 0.001, ** p < 0.01, * p < 0.05. Format: coefficient (Std. error)"""

GOLDEN_MD = r"""| | (1) | (2) |
|:--|--:|--:|
| Dep. variable | y | y |
| Intercept | 5.658\*\*\* |  |
|  | (87.288) |  |
| x | 0.388\*\*\* | 0.394\*\*\* |
|  | (40.458) | (25.253) |
| log(dist) | -0.392\*\*\* | -0.414\*\*\* |
|  | (-53.084) | (-49.822) |
| C(region)[T.1] | 0.187\*\*\* |  |
|  | (8.583) |  |
| C(region)[T.2] | -0.043 |  |
|  | (-1.732) |  |
| zi:wj |  | 0.195\*\*\* |
|  |  | (10.637) |
| i^k | - | x |
| j | - | x |
| Family | poisson | poisson |
| Cov. type | nonrobust | cluster (i + j) |
| Observations | 1,019 | 1,019 |
| Log-likelihood | -3515.652 | -2491.929 |
| Pseudo R2 | 0.370 | 0.553 |

Significance: \*\*\* p < 0.001, \*\* p < 0.01, \* p < 0.05. Format: coefficient (z statistic)"""


def test_etable_golden_text_and_markdown(fits):
    assert dg.etable(list(fits)) == GOLDEN_TEXT
    assert dg.etable(list(fits[:2]), type="md", stats="tstat") == GOLDEN_MD


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def test_etable_cells_from_the_fits(fits, tmp_path):
    """Every coefficient cell is the estimate to 3 decimals with fixest's stars; the cells under
    it the SE; effects marked; the fixed-effects fit's pseudo R2 against its constant-only model
    on the same cells (checked against statsmodels in test_fixed_effects.py)."""
    assert STARS == ((0.001, "***"), (0.01, "**"), (0.05, "*"))
    frame = dg.etable(list(fits), type="df", digits=4)
    for col, res in zip(frame.columns, fits, strict=True):
        for term in res.params.index:
            k = list(frame.index).index(term)
            assert frame[col].iloc[k] == f"{res.params[term]:.4f}" + _stars(res.pvalues[term])
            assert frame[col].iloc[k + 1] == f"({res.bse[term]:.4f})"
    assert list(frame.loc["i^k"]) == ["-", "x", "-"]
    assert frame.loc["Pseudo R2"].iloc[1] == f"{fits[1].pseudo_rsquared:.4f}"
    assert frame.loc["Pseudo R2"].iloc[0] == f"{fits[0].pseudo_rsquared:.4f}"
    assert frame.loc["Log-likelihood"].iloc[1] == f"{fits[1].llf:.4f}"
    tex = dg.etable(list(fits), type="tex", file=tmp_path / "t.tex")
    assert tex.startswith(r"\begin{tabular}{lrrr}") and tex.endswith(r"\end{tabular}")
    assert r"0.388$^{***}$ & 0.394$^{***}$ & 0.349$^{***}$ \\" in tex
    assert r"i\textasciicircum{}k & - & x & - \\" in tex
    assert (tmp_path / "t.tex").read_text() == tex + "\n"
    html = dg.etable(list(fits), type="html", names=["PPML", "PPML FE", "OLS"])
    assert "<th>PPML FE</th>" in html and html.count("<tr") == len(frame) + 2  # head, rows, foot
    assert "p &lt; 0.001" in html
    only = dg.etable(list(fits), keep=["x"], type="df")
    assert [r for r in only.index if r][:2] == ["Dep. variable", "x"]
    nb = dg.fit(make_panel(seed=7), "y ~ x", family=dg.NegativeBinomial(alpha=None), progress=False)
    both = dg.etable([fits[0], nb], type="df")
    assert list(both.loc["alpha (NB2)"]) == ["", f"{nb.alpha:.3f}"] and nb.alpha > 0
    with pytest.raises(ValueError, match="type="):
        dg.etable(list(fits), type="xlsx")
    with pytest.raises(ValueError, match="stats="):
        dg.etable(list(fits), stats="pvalue")


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", head[16:24])


def test_coefplot_writes_a_png_with_the_terms_and_intervals(fits, tmp_path):
    path = tmp_path / "coef.png"
    fig = dg.coefplot(list(fits[:2]), path=path, names=["PPML", "PPML FE"])
    w, h = _png_size(path)
    assert 600 < w < 2000 and 300 < h < 3000 and path.stat().st_size > 10_000
    ax = fig.axes[0]
    terms = ["x", "log(dist)", "C(region)[T.1]", "C(region)[T.2]", "zi:wj"]  # no intercept by default
    assert [t.get_text() for t in ax.get_yticklabels()] == terms
    assert "95% confidence interval" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["PPML", "PPML FE"]
    # the horizontal error bars span each fit's confidence interval
    for container, res in zip(ax.containers, fits[:2], strict=True):
        segs = container.lines[2][0].get_segments()
        ci = res.conf_int()
        shown = [t for t in terms if t in res.params.index]
        np.testing.assert_allclose([s[0][0] for s in segs], ci.loc[shown, 0], rtol=1e-12)
        np.testing.assert_allclose([s[1][0] for s in segs], ci.loc[shown, 1], rtol=1e-12)
    fig1 = fits[0].plot(intercept=True)
    assert fig1.axes[0].get_yticklabels()[0].get_text() == "Intercept"
    with pytest.raises(ValueError, match="no coefficient"):
        fits[0].plot(keep=["nothing"])


def test_plot_convergence(fits, tmp_path):
    res = fits[0]
    path = tmp_path / "conv.png"
    fig = res.plot_convergence(path=path)
    assert _png_size(path)[0] > 600
    axes = fig.axes
    assert [a.get_ylabel() for a in axes] == ["log-likelihood", "max |gradient|", "step size"]
    assert axes[1].get_yscale() == "log"
    np.testing.assert_allclose(axes[0].lines[0].get_ydata(), res.history["ll"].to_numpy())
    assert axes[0].lines[0].get_ydata()[-1] == pytest.approx(res.llf, rel=1e-12)
    assert len(axes[2].lines[0].get_xdata()) == len(res.history) - 1  # iteration 0 takes no step


def test_a_missing_matplotlib_names_the_extra(fits, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "daskglm\[plot\]"'):
        fits[0].plot()


def test_cli_writes_the_table_and_the_plot(tmp_path, capsys):
    from daskglm.api.cli import main

    ds = make_panel(seed=7)
    store = str(tmp_path / "p.zarr")
    ds.to_zarr(store, mode="w")
    table, plot = tmp_path / "t.md", tmp_path / "c.png"
    f = "y ~ x + log(dist) + zi:wj | i^k + j"
    args = ["fit", store, "--formula", f, "--family", "poisson", "--no-progress"]
    assert main(args + ["--table", str(table), "--plot", str(plot)]) == 0
    res = dg.fit(ds, f, family="poisson", progress=False)
    assert table.read_text() == dg.etable([res], type="md") + "\n"
    assert _png_size(plot)[0] > 600
    assert main(args + ["--table", str(tmp_path / "t.xlsx")]) == 2
    assert "suffix picks the format" in capsys.readouterr().err
