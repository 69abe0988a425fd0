"""Reading the setup pass: validation errors, dropped cells, collinearity, starting sums.

Pure numpy. :func:`interpret_setup` turns the summed statistics of the setup pass into either
a clear error (naming the variable, the problem, the number of cells, and how to fix it) or a
:class:`SetupInfo` the solvers start from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .layout import Layout

__all__ = ["SetupInfo", "interpret_setup", "collinear_groups", "DataError"]


class DataError(ValueError):
    """The data break a rule of the model (the message says which variable and how)."""


@dataclass
class SetupInfo:
    """What the setup pass established about the data."""

    n_used: int
    n_dropped: int
    dropped_by: dict[str, int]
    sums: dict[str, float]
    ll_const: float
    ll_sat: float | None
    gram: np.ndarray
    layout: Layout

    @property
    def sum_weights(self) -> float:
        return self.sums["sw"]


def collinear_groups(gram: np.ndarray, names: list[str], rtol: float = 1e-11) -> list[str]:
    """Describe each exact linear dependence among the columns of a Gram matrix.

    Returns one sentence per dependence, e.g. ``"x2 = 2 * x1 - 1 * Intercept"``, or
    ``"x3 is zero at every used cell"``.
    """
    d = np.diag(gram).copy()
    out = []
    dmax = d.max() if d.size else 0.0
    zero = d <= rtol * max(dmax, 1e-300)
    for j in np.flatnonzero(zero):
        out.append(f"{names[j]} is zero at every used cell")
    keep = np.flatnonzero(~zero)
    if keep.size < 2:
        return out
    s = 1.0 / np.sqrt(d[keep])
    C = gram[np.ix_(keep, keep)] * s[:, None] * s[None, :]
    lam, vec = np.linalg.eigh(C)
    for k in np.flatnonzero(lam <= rtol * lam.max() * keep.size):
        v = vec[:, k] * s  # coefficients on the original columns: sum v_j x_j = 0
        big = np.abs(vec[:, k]) > 1e-6
        j0 = int(np.argmax(np.abs(vec[:, k])))
        terms = []
        for j in np.flatnonzero(big):
            if j == j0:
                continue
            coef = -v[j] / v[j0]
            terms.append(f"{'-' if coef < 0 else '+'} {abs(coef):.4g} * {names[keep[j]]}")
        rel = " ".join(terms).lstrip("+ ") if terms else "0"
        out.append(f"{names[keep[j0]]} = {rel}")
    return out


def interpret_setup(layout: Layout, stats: dict) -> SetupInfo:
    """Raise a :class:`DataError` for bad data, else summarise the setup pass."""
    args = layout.args
    yname = args[layout.role("y")[0]].name
    dropped_by: dict[str, int] = {}
    for k, spec in enumerate(args):
        n = int(stats["bad_used"][k])
        if n == 0 or spec.role == "y":
            continue
        if layout.missing == "drop":
            dropped_by[spec.name] = n
            continue
        raise DataError(
            f"{spec.role} variable {spec.name!r} is NaN or infinite at {n} used cell(s) (cells where "
            f"{yname!r} is observed). Fix those values, mask the cells (set {yname!r} to NaN "
            "there), or pass missing='drop' to leave them out"
        )
    n_used = int(stats["n_used"])
    n_dropped = int(stats["n_candidate"]) - n_used
    if n_used == 0:
        raise DataError(
            f"the panel is empty after masking: no cell has a finite {yname!r}"
            + (", a non-zero weight" if layout.role("weights") else "")
            + (" and finite inputs" if layout.missing == "drop" else "")
            + ". Check the data (are all values NaN?) and the weights"
        )
    if stats["neg_weights"] > 0:
        (k,) = layout.role("weights")
        raise DataError(
            f"weights variable {args[k].name!r} is negative at {int(stats['neg_weights'])} used "
            "cell(s); frequency weights must be >= 0 (0 leaves a cell out)"
        )
    for k, n in enumerate(stats["nonpos_exposure"]):
        if n > 0:
            raise DataError(
                f"exposure variable {args[k].name!r} is zero or negative at {int(n)} used cell(s); "
                "an exposure must be > 0 (it enters the model as log(exposure))"
            )
    for rule, n in zip(layout.family.domain_rules(), stats["domain"], strict=False):
        if n > 0:
            name = yname if rule.role == "y" else args[layout.role(rule.role)[0]].name
            raise DataError(
                f"{rule.role} variable {name!r} {rule.problem} at {int(n)} used cell(s), which the "
                f"{layout.family.name} family does not allow"
            )
    gram = np.asarray(stats["gram"])
    problems = collinear_groups(gram, layout.param_names[: layout.n_beta])
    if problems:
        raise DataError(
            "the covariates are perfectly collinear at the used cells: "
            + "; ".join(problems)
            + ". Drop one covariate of each relation (with intercept=True, a covariate that is "
            "constant over the used cells is collinear with the intercept)"
        )
    # full-grid inputs without any non-finite value need no sanitising in later passes
    new_args = tuple(
        replace(a, sanitize=bool(stats["bad_any"][k] > 0) or len(a.axes) < layout.ndim)
        for k, a in enumerate(args)
    )
    clean = Layout(layout.dims, new_args, layout.blocks, layout.family, layout.missing)
    sums = {k: float(stats[k]) for k in ("sw", "swy", "swy2", "swoff", "swyoff", "swd", "swm")}
    ll_sat = None if np.isnan(stats["ll_sat"]) else float(stats["ll_sat"])
    return SetupInfo(n_used, n_dropped, dropped_by, sums, float(stats["ll_const"]), ll_sat, gram, clean)
