"""Reading the setup pass: validation errors, dropped cells, collinearity, starting sums.

Pure numpy. :func:`interpret_setup` turns the summed statistics of the setup pass into either
a clear error (naming the variable, the problem, the number of cells, and how to fix it) or a
:class:`SetupInfo` the solvers start from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .layout import Layout

__all__ = [
    "SetupInfo",
    "interpret_setup",
    "collinear_groups",
    "needs_orthogonal_check",
    "intercept_position",
    "DataError",
]


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
    #: R factor of the weighted design's QR when the Gram matrix was too ill-conditioned to
    #: judge collinearity (then the fit's standard errors also come from a QR factor)
    r_factor: np.ndarray | None = None

    @property
    def sum_weights(self) -> float:
        return self.sums["sw"]


#: A column whose Gram diagonal (weighted sum of squares) is below this is zero (or underflows).
ZERO_NORM2 = 1e-300
#: Smallest eigenvalue of the (centred) correlation matrix below which the Gram matrix cannot
#: tell a dependence from ill-conditioning reliably; :func:`needs_orthogonal_check` then asks for
#: the R factor of a QR of the design, whose singular values are exact to about 1e-15.
GRAM_UNCLEAR = 1e-6
#: Relative singular value below which a (centred, scaled) column combination is a dependence,
#: judged on the R factor. Backward-stable QR perturbs each column by about 1e-16 of its norm
#: (times a modest growth factor), so exact dependencies sit near 1e-16 while the most
#: ill-conditioned full-rank design of NIST's StRD (Filip, degree-10 polynomial) sits at 3e-10.
R_RTOL = 1e-12


def _centring(G: np.ndarray, intercept: int | None, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The columns judged after centring on the intercept, and the weighted means of all columns."""
    if intercept is None or intercept not in set(keep.tolist()) or not G[intercept, intercept] > 0:
        return keep, None
    return keep[keep != intercept], G[intercept] / G[intercept, intercept]


def _centred_parts(
    G: np.ndarray, cols: np.ndarray, intercept: int | None, means, r_factor: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the columns ``cols``: their centred sums of squares, the Gram matrix of the centred
    columns scaled to unit diagonal (C) or, from ``r_factor``, a square root M of it (M'M = C)."""
    if r_factor is None:
        Gc = G - np.outer(G[intercept], G[intercept]) / G[intercept, intercept] if means is not None else G
        Gc = Gc[np.ix_(cols, cols)]
        dc = np.diag(Gc).copy()
        return dc, Gc, None
    R = np.asarray(r_factor, dtype=np.float64)
    if means is not None:
        # the R factor of the design with the intercept first: its lower-right part is the R
        # factor of the columns centred on their weighted means (the Schur complement), exactly
        order = np.concatenate([[intercept], cols])
        R = np.linalg.qr(R[:, order], mode="r")[1:, 1:]
    else:
        R = R[:, cols]
    dc = np.einsum("ij,ij->j", R, R)
    return dc, None, R


def needs_orthogonal_check(gram: np.ndarray, intercept: int | None = None) -> bool:
    """Whether the Gram matrix is too ill-conditioned to decide collinearity on its own.

    True when the centred correlation matrix (see :func:`collinear_groups`) has an eigenvalue
    below :data:`GRAM_UNCLEAR` (relative), which happens for true dependencies and for full-rank
    but badly conditioned designs (high-degree polynomials, raw calendar years beside their
    squares). The caller then computes the R factor of a QR of the weighted design (one more
    pass) and passes it to :func:`collinear_groups`.
    """
    G = 0.5 * (np.asarray(gram, dtype=np.float64) + np.asarray(gram, dtype=np.float64).T)
    if G.size == 0 or not np.all(np.isfinite(G)):
        return False
    d = np.diag(G)
    keep = np.flatnonzero(d > ZERO_NORM2)
    cols, means = _centring(G, intercept, keep)
    if cols.size == 0:
        return False
    dc, Gc, _ = _centred_parts(G, cols, intercept, means, None)
    if np.any(dc <= GRAM_UNCLEAR * d[cols]):
        return True
    s = 1.0 / np.sqrt(dc)
    lam = np.linalg.eigvalsh(Gc * s[:, None] * s[None, :])
    return bool(lam.min() <= GRAM_UNCLEAR * lam.max())


def collinear_groups(
    gram: np.ndarray,
    names: list[str],
    rtol: float = 1e-11,
    *,
    intercept: int | None = None,
    r_factor: np.ndarray | None = None,
) -> list[str]:
    """Describe each exact linear dependence among the columns of a (weighted) design.

    Scale invariant: each column is judged against its own norm, not against the largest
    column, so covariates in dollars (1e12) beside an intercept and a calendar year are not
    mistaken for zero. With ``intercept`` (the position of the constant column), the other
    columns are first centred on their weighted means: a column constant over the used cells is
    reported as a multiple of the intercept, and the rest are judged by the correlation-like
    matrix of the centred columns (unit diagonal), whose small eigenvalues are dependencies.

    Parameters
    ----------
    gram : ndarray
        ``X' W X`` over the used cells (W the frequency weights).
    names : list of str
        The column names.
    rtol : float
        Relative eigenvalue (of the centred correlation matrix) at or below which a Gram-based
        decision calls a combination a dependence. It is raised for combinations involving
        columns whose centring cancels many digits (a calendar year: mean^2 / variance ~ 1e4).
    intercept : int, optional
        Position of the intercept column (centring); ``None`` judges uncentred columns.
    r_factor : ndarray, optional
        The R factor of a QR of ``sqrt(W) X`` (``R'R = X'WX``). When given, decisions use its
        singular values (accurate to about 1e-15 relative, where the Gram's eigenvalues are
        only accurate to about 1e-16 of the largest), so full-rank designs as ill-conditioned
        as NIST's Filip are told from true dependencies (threshold :data:`R_RTOL`).

    Returns
    -------
    list of str
        One sentence per dependence, e.g. ``"x2 = 2 * x1 - 1 * Intercept"``, or
        ``"x3 is zero at every used cell"``, or ``"cst = 3 * Intercept (cst is constant at the
        used cells)"``.
    """
    G = 0.5 * (np.asarray(gram, dtype=np.float64) + np.asarray(gram, dtype=np.float64).T)
    d = np.diag(G).copy()
    out = []
    zero = ~(d > ZERO_NORM2)
    for j in np.flatnonzero(zero):
        out.append(f"{names[j]} is zero at every used cell")
    keep = np.flatnonzero(~zero)
    cols, means = _centring(G, intercept, keep)
    if cols.size == 0:
        return out
    dc, Gc, M = _centred_parts(G, cols, intercept, means, r_factor)
    # a column equal to a constant: its centred sum of squares is rounding noise
    ratio = dc / d[cols]
    const = ratio <= (rtol if M is None else R_RTOL**2)
    for j in cols[const]:
        c = means[j]
        out.append(f"{names[j]} = {c:.4g} * {names[intercept]} ({names[j]} is constant at the used cells)")
    live = ~const
    cols, dc, amp = cols[live], dc[live], 1.0 / np.maximum(ratio[live], 1e-300)
    if cols.size < (1 if means is not None else 2):
        return out
    s = 1.0 / np.sqrt(dc)
    if M is None:
        sub = np.flatnonzero(live)
        C = Gc[np.ix_(sub, sub)] * s[:, None] * s[None, :]
        lam, vec = np.linalg.eigh(C)
        # rounding noise of the centred Gram grows with the cancellation of each column (amp)
        noise = rtol * cols.size * lam.max() * np.maximum((vec**2).T @ amp, 1.0)
        null = np.flatnonzero(lam <= noise)
    else:
        _, sv, vt = np.linalg.svd(M[:, live] * s[None, :])
        vec = vt.T
        noise = R_RTOL * np.sqrt(cols.size) * sv.max() * np.sqrt(np.maximum((vec**2).T @ amp, 1.0))
        null = np.flatnonzero(sv <= noise)
    basis, pivots = _echelon(vec[:, null])
    for v, j0 in zip(basis.T, pivots, strict=True):
        out.append(_relation(v * s, j0, cols, d, names, intercept, means))
    return out


def _echelon(N: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """A basis of the same null space in which each vector has its own pivot variable (1 there,
    0 at the other vectors' pivots), so that each reads as one column in terms of the others.

    ``N`` holds null vectors of the scaled columns as its columns. Pivots are taken among the
    entries within half of a vector's largest, preferring the column listed last (the one a
    user would drop). Entries below 1e-7 of the pivot are rounding noise and set to 0.
    """
    N = np.array(N, dtype=np.float64)
    pivots: list[int] = []
    for r in range(N.shape[1]):
        mag = np.abs(N[:, r])
        mag[pivots] = 0.0
        i = int(np.flatnonzero(mag >= 0.5 * mag.max())[-1])
        N[:, r] /= N[i, r]
        for q in range(N.shape[1]):
            if q != r:
                N[:, q] -= N[i, q] * N[:, r]
        pivots.append(i)
    N[np.abs(N) < 1e-7] = 0.0
    return N, pivots


def _relation(coef: np.ndarray, j0: int, cols: np.ndarray, d: np.ndarray, names, intercept, means) -> str:
    """``"x_a = c_b * x_b + ..."`` from ``sum_j coef_j (x_j - m_j) = 0`` (m_j = 0 uncentred),
    with column ``cols[j0]`` on the left."""
    terms = dict(zip(cols.tolist(), coef, strict=True))
    if means is not None:
        terms[intercept] = -float(coef @ means[cols])
    idx = np.array(list(terms))
    c = np.array([terms[j] for j in idx])
    size = np.abs(c) * np.sqrt(d[idx])  # each term's size at its column's norm
    rel = ""
    for j in np.flatnonzero(size > 1e-7 * size[j0]):
        if j == j0:
            continue
        v = -c[j] / c[j0]
        term = f"{abs(v):.4g} * {names[idx[j]]}"
        rel += (("-" if v < 0 else "") + term) if not rel else (" - " if v < 0 else " + ") + term
    return f"{names[idx[j0]]} = {rel or '0'}"


def intercept_position(layout: Layout) -> int | None:
    """Position of the intercept among the coefficients (``None`` without one)."""
    for block, sl in zip(layout.blocks, layout.block_slices, strict=True):
        if block.intercept:
            return sl.start
    return None


def _check_domain(layout: Layout, counts, yname: str) -> None:
    """Raise for the first broken domain rule, the auxiliary inputs' rules (``trials``, ``event``)
    first: a bad auxiliary value also breaks the response's rules that refer to it (a negative
    number of trials makes every ``y`` "exceed" it), and it is the one to fix. A response rule
    broken beside an auxiliary input that is one number for every cell says which number."""
    rules = list(zip(layout.family.domain_rules(), counts, strict=False))
    for rule, n in sorted(rules, key=lambda rn: rn[0].role == "y"):
        if not n > 0:
            continue
        fix = f"fix those values, or set {yname!r} to NaN there to leave the cells out"
        if rule.role == "y":
            what = f"y variable {yname!r}"
            for role in layout.family.aux_roles:
                spec = layout.args[layout.role(role)[0]]
                if not spec.axes:  # one number for every cell (the default trials=1, say)
                    fix += (
                        f"; {spec.name} at every cell: if {yname!r} is not limited by that number, "
                        f"give the {role} of each cell as a variable ({role}='n'; command line: "
                        f"--{role} n)"
                    )
        else:
            spec = layout.args[layout.role(rule.role)[0]]
            what = spec.name if not spec.axes else f"{rule.role} variable {spec.name!r}"
        raise DataError(
            f"{what} {rule.problem} at {int(n)} used cell(s), which the {layout.family.name} family "
            f"does not allow: {fix}"
        )


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
        derived = (
            f" ({spec.name!r} is computed from the data: NaN or inf where a function's argument is "
            "outside its domain, e.g. the log of a value <= 0 or the sqrt of a negative one)"
            if "(" in spec.name
            else ""
        )
        raise DataError(
            f"{spec.role} variable {spec.name!r} is NaN or infinite at {n} used cell(s) (cells where "
            f"{yname!r} is observed){derived}. Fix those values, mask the cells (set {yname!r} to NaN "
            "there), or pass missing='drop' to leave them out"
        )
    n_inf = int(stats.get("inf_y", 0))
    if n_inf and layout.missing != "drop":
        log_hint = (
            " (the log of a zero is -inf: leave the zeros out this way, or model the level itself "
            "with a log-link family such as family='poisson', which keeps them)"
            if "log" in yname
            else ""
        )
        raise DataError(
            f"response {yname!r} is infinite (inf or -inf) at {n_inf} cell(s); only NaN marks a "
            f"missing cell. Fix those values, set {yname!r} to NaN there, or pass missing='drop' to "
            f"leave them out{log_hint}"
        )
    if n_inf:
        dropped_by[yname] = n_inf
    n_used = int(stats["n_used"])
    n_dropped = int(stats["n_candidate"]) - n_used + n_inf
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
    _check_domain(layout, stats["domain"], yname)
    gram = np.asarray(stats["gram"])
    problems = collinear_groups(
        gram,
        layout.param_names[: layout.n_beta],
        intercept=intercept_position(layout),
        r_factor=stats.get("r_factor"),
    )
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
    return SetupInfo(
        n_used,
        n_dropped,
        dropped_by,
        sums,
        float(stats["ll_const"]),
        ll_sat,
        gram,
        clean,
        stats.get("r_factor"),
    )
