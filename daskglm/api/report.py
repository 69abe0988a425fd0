"""Results people read and show: tidy tables, regression tables side by side, coefficient plots.

Public-API layer. :func:`tidy` is one fit as a DataFrame (broom's and pyfixest's ``tidy``);
:func:`etable` puts several fits side by side as text, markdown, LaTeX or HTML (like pyfixest's
``etable`` and R's ``modelsummary``); :func:`coefplot` and :func:`plot_convergence` draw with
matplotlib, an optional dependency (``pip install "daskglm[plot]"``). Figures are built on the
Agg canvas, never through pyplot's global state, so they can be written from any thread or
process; in a notebook the returned ``Figure`` displays itself.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["tidy", "etable", "coefplot", "plot_convergence", "STARS"]

#: fixest's default significance stars: (p-value threshold, mark), checked in order
STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


def tidy(res, alpha: float = 0.05) -> pd.DataFrame:
    """One row per coefficient: estimate, std error, statistic, p-value, confidence interval.

    Parameters
    ----------
    res : GLMResults
        A fit (with standard errors: ``cov_type`` not ``None``).
    alpha : float
        The intervals' level is ``1 - alpha``.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``term``; columns ``estimate``, ``std_error``, ``statistic`` (z), ``p_value``,
        ``conf_low``, ``conf_high`` (normal reference distribution, as ``res.conf_int``).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must be between 0 and 1 (e.g. 0.05 for 95% intervals)")
    ci = res.conf_int(alpha)
    out = pd.DataFrame(
        {
            "estimate": res.params,
            "std_error": res.bse,
            "statistic": res.tvalues,
            "p_value": res.pvalues,
            "conf_low": ci[0],
            "conf_high": ci[1],
        }
    )
    out.index.name = "term"
    return out


# ---------------------------------------------------------------------------- etable
def _stars(p: float) -> str:
    for threshold, mark in STARS:
        if p < threshold:
            return mark
    return ""


def _fmt(v: float, digits: int) -> str:
    if v is None or not np.isfinite(v):
        return ""
    return f"{v:.{digits}f}"


def _fmt_stat(v: float, digits: int) -> str:
    """A fit statistic: fixed decimals, or scientific notation beyond 1e7 (PPML on euros)."""
    if v is not None and np.isfinite(v) and abs(v) >= 1e7:
        return f"{v:.{digits + 1}e}"
    return _fmt(v, digits)


def _maybe(res, attr: str):
    """An attribute, or ``None`` where it is not defined (e.g. ``alpha`` outside NB2)."""
    try:
        v = getattr(res, attr)
    except (AttributeError, ValueError):
        return None
    return v


def _cov_label(res) -> str:
    cov = res.cov_type or "none"
    if cov == "cluster" and res.cluster:
        parts = []
        for c in res.cluster:
            parts.append(c if isinstance(c, str) else "^".join(c))
        return f"cluster ({' + '.join(parts)})"
    return cov


def _effects(res) -> list[str]:
    return list(getattr(res, "n_levels", {}) or {})


def etable_frame(
    models: Sequence,
    *,
    stats: str = "se",
    digits: int = 3,
    names: Sequence[str] | None = None,
    keep: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[int]]:
    """The cells of :func:`etable` as strings, and the row indices where its sections start."""
    if stats not in ("se", "tstat"):
        raise ValueError(f"stats={stats!r}: use 'se' (std errors in parentheses) or 'tstat' (z statistics)")
    models = list(models)
    if not models:
        raise ValueError("etable needs at least one fit")
    cols = list(names) if names is not None else [f"({k + 1})" for k in range(len(models))]
    if len(cols) != len(models):
        raise ValueError(f"names= has {len(cols)} entries for {len(models)} fits")
    terms: list[str] = []
    for m in models:
        terms += [t for t in m.params.index if t not in terms]
    if keep is not None:
        terms = [t for t in terms if t in set(keep)]
    if drop is not None:
        terms = [t for t in terms if t not in set(drop)]
    rows: dict[str, list[str]] = {"Dep. variable": [str(m._spec.y) for m in models]}
    sections = [1]
    for t in terms:
        est, sub = [], []
        for m in models:
            if t not in m.params.index:
                est.append("")
                sub.append("")
                continue
            has_se = m.cov_type is not None
            p = float(m.pvalues[t]) if has_se else np.nan
            est.append(_fmt(float(m.params[t]), digits) + (_stars(p) if has_se else ""))
            s = float(m.bse[t] if stats == "se" else m.tvalues[t]) if has_se else np.nan
            sub.append(f"({_fmt(s, digits)})" if has_se else "")
        rows[t] = est
        if any(sub):  # the parentheses' row (none without standard errors); its label is blank
            rows[f"{t} \x00"] = sub
    effects: list[str] = []
    for m in models:
        effects += [e for e in _effects(m) if e not in effects]
    if effects:
        sections.append(len(rows))
        for e in effects:
            rows[e] = ["x" if e in _effects(m) else "-" for m in models]
    sections.append(len(rows))
    rows["Family"] = [m.family.name for m in models]
    rows["Cov. type"] = [_cov_label(m) for m in models]
    rows["Observations"] = [f"{int(m.nobs):,}" for m in models]
    rows["Log-likelihood"] = [_fmt_stat(m.llf, digits) for m in models]
    r2 = [_maybe(m, "pseudo_rsquared") for m in models]
    rows["Pseudo R2"] = [_fmt(v, digits) if v is not None else "" for v in r2]
    alphas = [_maybe(m, "alpha") for m in models]
    if any(a is not None for a in alphas):  # NB2's dispersion
        rows["alpha (NB2)"] = [_fmt(a, digits) if a is not None else "" for a in alphas]
    frame = pd.DataFrame(rows, index=cols).T
    return frame, sections


def _row_label(key: str) -> str:
    return "" if key.endswith(" \x00") else key


def _note(stats: str) -> str:
    marks = ", ".join(f"{mark} p < {t:g}" for t, mark in STARS)
    what = "Std. error" if stats == "se" else "z statistic"
    return f"Significance: {marks}. Format: coefficient ({what})"


def _render_text(frame: pd.DataFrame, sections: list[int], note: str) -> str:
    labels = [_row_label(k) for k in frame.index]
    w0 = max(len(s) for s in labels + [""])
    widths = [max(len(c), *(len(v) for v in frame[c])) for c in frame.columns]
    line = "-" * (w0 + sum(w + 2 for w in widths))
    out = [" " * w0 + "".join(f"  {c:>{w}}" for c, w in zip(frame.columns, widths, strict=True)), line]
    for k, (lab, (_, row)) in enumerate(zip(labels, frame.iterrows(), strict=True)):
        if k in sections:
            out.append(line)
        out.append(f"{lab:<{w0}}" + "".join(f"  {v:>{w}}" for v, w in zip(row, widths, strict=True)))
    out += [line, note]
    return "\n".join(o.rstrip() for o in out)


def _render_md(frame: pd.DataFrame, sections: list[int], note: str) -> str:  # noqa: ARG001
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("*", "\\*")

    out = ["| | " + " | ".join(frame.columns) + " |", "|:--|" + "--:|" * len(frame.columns)]
    for key, row in frame.iterrows():
        out.append(f"| {cell(_row_label(key))} | " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(out) + "\n\n" + cell(note)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_"}
_TEX.update({"{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"})


def _tex(s: str) -> str:
    s = "".join(_TEX.get(ch, ch) for ch in s)
    for mark in ("***", "**", "*"):
        if s.endswith(mark):
            return s[: -len(mark)] + "$^{" + mark + "}$"
    return s


def _render_tex(frame: pd.DataFrame, sections: list[int], note: str) -> str:
    n = len(frame.columns)
    out = [
        r"\begin{tabular}{l" + "r" * n + "}",
        r"\hline",
        " & " + " & ".join(_tex(c) for c in frame.columns) + r" \\",
        r"\hline",
    ]
    for k, (key, row) in enumerate(frame.iterrows()):
        if k in sections:
            out.append(r"\hline")
        out.append(_tex(_row_label(key)) + " & " + " & ".join(_tex(v) for v in row) + r" \\")
    out += [
        r"\hline",
        r"\multicolumn{" + str(n + 1) + "}{l}{\\footnotesize " + _tex(note) + "}",
        r"\end{tabular}",
    ]
    return "\n".join(out)


def _render_html(frame: pd.DataFrame, sections: list[int], note: str) -> str:
    e = html.escape
    out = ['<table class="daskglm-etable">', "<thead><tr><th></th>"]
    out[-1] += "".join(f"<th>{e(c)}</th>" for c in frame.columns) + "</tr></thead>"
    out.append("<tbody>")
    for k, (key, row) in enumerate(frame.iterrows()):
        style = ' style="border-top: 1px solid"' if k in sections else ""
        cells = "".join(f'<td style="text-align: right">{e(v)}</td>' for v in row)
        out.append(f"<tr{style}><td>{e(_row_label(key))}</td>{cells}</tr>")
    out.append("</tbody>")
    out.append(f'<tfoot><tr><td colspan="{len(frame.columns) + 1}">{e(note)}</td></tr></tfoot>')
    out.append("</table>")
    return "\n".join(out)


def etable(
    models,
    type: str = "text",  # noqa: A002  (pyfixest's name)
    *,
    stats: str = "se",
    digits: int = 3,
    names: Sequence[str] | None = None,
    keep: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    file: str | os.PathLike | None = None,
):
    """A regression table of several fits side by side, like pyfixest's ``etable``.

    Rows: each coefficient with its significance stars (fixest's: ``***`` p < 0.001, ``**``
    p < 0.01, ``*`` p < 0.05) and, below it in parentheses, its standard error or z statistic;
    a row per fixed effect marked ``x`` where a fit has it (``-`` where not); the family, the
    covariance type, the number of cells used, the log-likelihood and McFadden's pseudo R2
    (fixed-effects fits: against the constant-only model on the same cells), NB2's alpha when a fit has one.
    Costs one constant-only fit per model (a few passes), for the pseudo R2 (cached on the result).

    Parameters
    ----------
    models : GLMResults or list of them
    type : {"text", "md", "tex", "html", "df"}
        Plain text, markdown, a LaTeX ``tabular``, an HTML ``table``, or the cells as a DataFrame.
    stats : {"se", "tstat"}
        What goes in parentheses.
    digits : int
        Decimals.
    names : list of str, optional
        Column headings (default ``(1)``, ``(2)``, ...).
    keep, drop : list of str, optional
        Coefficients to show / leave out (by name).
    file : str or path, optional
        Also write the table there.

    Returns
    -------
    str or pandas.DataFrame
    """
    if not isinstance(models, list | tuple):
        models = [models]
    renderers = {"text": _render_text, "md": _render_md, "tex": _render_tex, "html": _render_html}
    if type not in (*renderers, "df"):
        raise ValueError(f"type={type!r}: use one of {[*renderers, 'df']}")
    frame, sections = etable_frame(models, stats=stats, digits=int(digits), names=names, keep=keep, drop=drop)
    if type == "df":
        frame.index = [_row_label(k) for k in frame.index]
        return frame
    out = renderers[type](frame, sections, _note(stats))
    if file is not None:
        with open(os.fspath(file), "w") as f:
            f.write(out + "\n")
    return out


# ---------------------------------------------------------------------------- plots
def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'plots need matplotlib, an optional dependency of daskglm: pip install "daskglm[plot]" '
            '(or pip install -e ".[plot]" in a checkout)'
        ) from err
    return Figure, FigureCanvasAgg


def _new_figure(size):
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, dpi: int = 150):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def coefplot(
    models,
    *,
    alpha: float = 0.05,
    names: Sequence[str] | None = None,
    keep: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    intercept: bool = False,
    ax=None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
):
    """A coefficient plot: each estimate with its ``1 - alpha`` confidence interval.

    Terms run down the vertical axis (first at the top); several fits are drawn side by side
    within each term, in different colours, with a legend.

    Parameters
    ----------
    models : GLMResults or list of them
    alpha : float
        Interval level ``1 - alpha`` (normal reference, as ``res.conf_int``).
    names : list of str, optional
        Legend labels (default ``(1)``, ``(2)``, ...).
    keep, drop : list of str, optional
        Terms to show / leave out.
    intercept : bool
        Show the intercept (left out by default: its scale is usually another).
    ax : matplotlib Axes, optional
        Draw there; otherwise a new Figure (Agg canvas).
    path : str or path, optional
        Write the figure (format from the suffix: .png, .pdf, .svg).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(models, list | tuple):
        models = [models]
    models = list(models)
    if not models:
        raise ValueError("coefplot needs at least one fit")
    labels = list(names) if names is not None else [f"({k + 1})" for k in range(len(models))]
    tables = [tidy(m, alpha) for m in models]
    terms: list[str] = []
    for t in tables:
        terms += [n for n in t.index if n not in terms]
    if not intercept:
        terms = [n for n in terms if n != "Intercept"]
    if keep is not None:
        terms = [n for n in terms if n in set(keep)]
    if drop is not None:
        terms = [n for n in terms if n not in set(drop)]
    if not terms:
        raise ValueError("coefplot: no coefficient left to plot (check keep=, drop=, intercept=)")
    if ax is None:
        fig = _new_figure((6.4, 1.2 + 0.45 * len(terms) * max(1, 0.6 * len(models))))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    n = len(models)
    width = 0.4
    offsets = np.linspace(-width / 2, width / 2, n) if n > 1 else np.zeros(1)
    pos = np.arange(len(terms), dtype=float)
    for k, (t, lab) in enumerate(zip(tables, labels, strict=True)):
        sub = t.reindex(terms)
        ok = sub["estimate"].notna().to_numpy()
        y = pos[ok] + offsets[k]
        est = sub["estimate"].to_numpy()[ok]
        lo, hi = sub["conf_low"].to_numpy()[ok], sub["conf_high"].to_numpy()[ok]
        ax.errorbar(
            est,
            y,
            xerr=np.vstack([est - lo, hi - est]),
            fmt="o",
            capsize=3,
            label=lab if n > 1 else None,
        )
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(pos, terms)
    ax.set_ylim(len(terms) - 0.5, -0.5)
    ax.set_xlabel(f"estimate and {100 * (1 - alpha):g}% confidence interval")
    if title is not None:
        ax.set_title(title)
    if n > 1:
        ax.legend(loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_convergence(res, *, path: str | os.PathLike | None = None, title: str | None = None):
    """The solver's path: log-likelihood, gradient norm (log scale) and step per iteration.

    Parameters
    ----------
    res : GLMResults
        Uses ``res.history`` (columns ``ll``, ``grad_norm``, ``step``).
    path : str or path, optional
        Write the figure.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.ticker import MaxNLocator

    h = res.history
    fig = _new_figure((6.4, 6.4))
    axes = fig.subplots(3, 1, sharex=True)
    it = h.index.to_numpy()
    axes[0].plot(it, h["ll"].to_numpy(), marker="o")
    axes[0].set_ylabel("log-likelihood")
    g = h["grad_norm"].to_numpy(dtype=float)
    axes[1].semilogy(it, np.where(g > 0, g, np.nan), marker="o")
    axes[1].set_ylabel("max |gradient|")
    took = it > 0  # iteration 0 is the start, without a step
    axes[2].plot(it[took], h["step"].to_numpy(dtype=float)[took], marker="o")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_ylabel("step size")
    axes[2].set_xlabel("iteration")
    axes[0].set_title(title or f"{res.solver}: {res.n_iter} iterations, converged={res.converged}")
    return _save(fig, path)
