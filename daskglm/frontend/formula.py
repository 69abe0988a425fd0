"""Formulas (fixest's syntax) evaluated on the named-dim variables themselves.

Named-dim front-end layer. ``"flow ~ tariff + log(dist) + rta | exporter^year + importer^year"``
is split at ``|`` (the fixed effects, handed to ``fe=`` as they are: ``^`` interacts dims), and
the rest is parsed by `formulaic <https://matthewwardrop.github.io/formulaic/>`_ (the parser
pyfixest uses) into terms. Each term is then evaluated on the ``xarray`` variables, so it keeps
the dims of what it is made of: ``log(dist)`` stays on ``(exporter, importer)``; ``x_i:z_j``
becomes a covariate on ``(i, j)`` (xarray broadcasting); a panel dim's own coordinate is a
variable too (``log(year)`` lives on ``(year,)``). The long design is never built: derived
variables are added (lazily when the data are dask-backed) to a copy of the Dataset and passed
to :func:`daskglm.fit` by name.

Supported: ``+``, ``-1`` / ``0`` / ``+0`` (no intercept), ``x:z`` and ``x*z`` (``x + z + x:z``),
``log``, ``log1p``, ``log10``, ``exp``, ``sqrt``, ``abs``, ``I(...)`` (Python arithmetic, e.g.
``I(x**2)``, ``I(x / 1000)``), ``C(region)`` (dummies, see below), ``offset(...)``
(``offset(log(e))``, summed with any ``offset=``), any such expression on the left-hand side.

``C(region)`` is one covariate with a feature dim of dummy columns on ``region``'s own dims;
its levels are the distinct values in the data (sorted), the first is the base level when the
model has an intercept or fixed effects (treatment coding). Parameter names are those of
formulaic and pyfixest: ``C(region)[T.b]`` (``C(region)[a]`` for every level without intercept
and effects), ``log(dist)``, ``I(x ** 2)``, ``x:z``. Interactions with ``C()`` are not supported.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from ..kernels.families import Family

__all__ = [
    "FormulaSpec",
    "FittedFormula",
    "parse_formula",
    "apply_formula",
    "is_formula",
    "is_long_table",
    "needs_dims_error",
]

#: functions a formula may call, by name (numpy ufuncs keep xarray's dims and dask laziness)
FUNCTIONS = {
    "log": np.log,
    "log1p": np.log1p,
    "log10": np.log10,
    "log2": np.log2,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "I": lambda v: v,
}
SPECIAL = ("C", "offset")


def is_formula(y) -> bool:
    """Whether ``fit``'s second argument is a formula (a string containing ``~``)."""
    return isinstance(y, str) and "~" in y


def is_long_table(data) -> bool:
    """Whether ``data`` is a long table (pandas/dask DataFrame, pyarrow Table, the path of
    parquet or CSV files) rather than a panel Dataset or zarr store."""
    if isinstance(data, pd.DataFrame):
        return True
    package = type(data).__module__.split(".")[0]  # no import of pyarrow or dask to ask
    if (package == "pyarrow" and hasattr(data, "column_names")) or (
        package == "dask" and hasattr(data, "npartitions") and hasattr(data, "columns")
    ):
        return True
    if isinstance(data, str | os.PathLike):
        name = os.fspath(data).rstrip("/").lower()
        return name.endswith((".parquet", ".pq", ".parq", ".csv", ".tsv"))
    return False


def needs_dims_error(data, effects: str | None = None) -> TypeError:
    """The error for a long table given without ``dims=``: what ``dims=`` is, with the table's
    columns and, from a formula's effects, the likely keys."""
    what = type(data).__name__ if not isinstance(data, str | os.PathLike) else repr(os.fspath(data))
    cols = None
    if isinstance(data, pd.DataFrame):
        cols = [str(c) for c in data.columns]
    elif type(data).__module__.startswith("pyarrow") and hasattr(data, "schema"):
        cols = list(data.schema.names)
    keys = []
    if effects:
        keys = [k.strip() for part in effects.replace("^", "+").split("+") if (k := part.strip())]
        keys = [k for k in dict.fromkeys(keys) if cols is None or k in cols]
    hint = f", e.g. dims={keys + ['...']}" if keys else ", e.g. dims=['exporter', 'importer', 'year']"
    shown = f"; its columns are {cols[:30]}{' ...' if len(cols) > 30 else ''}" if cols else ""
    return TypeError(
        f"data is a long table ({what}: one row per observed cell): pass dims=[...], the key columns "
        f"that name a cell{hint}. They become the panel dims (daskglm.from_long builds the panel; "
        f"every other column is placed on the dims it varies over){shown}"
    )


def _split_bar(formula: str) -> list[str]:
    """Split at the ``|`` that are not inside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in formula:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@dataclass(frozen=True)
class Term:
    """One term of the right-hand side: its name and the expressions it multiplies."""

    name: str
    factors: tuple[str, ...]


@dataclass
class FormulaSpec:
    """A parsed formula: response, terms, intercept, offsets and fixed effects (no data)."""

    formula: str
    lhs: str
    terms: list[Term]
    intercept: bool
    offsets: list[str]
    fe: str | None
    names: set[str] = field(default_factory=set)


def _names(expr: str) -> tuple[set[str], set[str]]:
    """The names an expression calls (functions) and the others it reads (variables)."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as err:
        raise ValueError(f"formula: cannot read the expression {expr!r}: {err.msg}") from err
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    if any(not isinstance(f, ast.Name) for f in calls):
        raise ValueError(f"formula: {expr!r} calls something other than a function by name (log, exp, ...)")
    called = {f.id for f in calls}
    unknown_fn = called - set(FUNCTIONS) - set(SPECIAL)
    if unknown_fn:
        raise ValueError(
            f"formula: unknown function {sorted(unknown_fn)[0]!r} in {expr!r}; the functions a formula "
            f"may use are {sorted(FUNCTIONS) + list(SPECIAL)}"
        )
    heads = {id(f) for f in calls}
    variables = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in heads}
    if any(isinstance(n, ast.Attribute) for n in ast.walk(tree)):
        raise ValueError(f"formula: {expr!r} reads an attribute; use the variables and functions by name")
    if variables & called:
        raise ValueError(
            f"formula: {expr!r} uses {sorted(variables & called)[0]!r} both as a function and a variable"
        )
    return called, variables


def _names_in(expr: str) -> set[str]:
    """Variable names an expression reads (function names left out)."""
    return _names(expr)[1]


def parse_formula(formula: str) -> FormulaSpec:
    """Parse a fixest formula ``y ~ terms [| effects]`` (no data needed).

    Parameters
    ----------
    formula : str
        E.g. ``"flow ~ tariff + log(dist) + rta | exporter^year + importer^year"``.

    Returns
    -------
    FormulaSpec

    Raises
    ------
    ValueError
        Syntax errors (with formulaic's message), a missing ``~``, more than one ``|``.
    """
    from formulaic import Formula
    from formulaic.errors import FormulaicError

    parts = _split_bar(formula)
    if len(parts) > 2:
        raise ValueError(
            f"formula {formula!r} has {len(parts) - 1} '|': daskglm reads 'y ~ covariates | effects' "
            "(instrumental variables, fixest's third part, are not supported)"
        )
    main = parts[0]
    fe = parts[1].strip() if len(parts) == 2 else None
    if fe is not None and not fe:
        raise ValueError(
            f"formula {formula!r}: nothing after '|'; name the fixed effects, e.g. '| exporter^year'"
        )
    if fe is not None and "~" in fe:
        raise ValueError(f"formula {formula!r}: the part after '|' lists fixed effects and has no '~'")
    if main.count("~") != 1:
        raise ValueError(f"formula {formula!r} must have exactly one '~' (response ~ covariates)")
    lhs_text = main.split("~")[0].strip()
    if not lhs_text:
        raise ValueError(f"formula {formula!r} has no response on the left of '~'")
    try:
        parsed = Formula(main)
    except FormulaicError as err:
        raise ValueError(f"formula {formula!r}: {err}") from err
    lhs_terms = [str(t) for t in parsed.lhs]
    if len(lhs_terms) != 1 or ":" in lhs_terms[0]:
        raise ValueError(f"formula {formula!r}: the left-hand side must be one response, e.g. 'flow ~ ...'")
    lhs = parsed.lhs[0].factors[0].expr
    terms, offsets, intercept = [], [], False
    names = set(_names_in(lhs))
    for t in parsed.rhs:
        factors = tuple(f.expr for f in t.factors)
        if str(t) == "1":
            intercept = True
            continue
        if any(f.eval_method.value == "literal" for f in t.factors):
            raise ValueError(f"formula {formula!r}: the constant term {str(t)!r} is not a covariate")
        for f in factors:
            names |= _names_in(f)
        if len(factors) == 1 and factors[0].startswith("offset("):
            offsets.append(factors[0])
            continue
        if len(factors) > 1 and any(f.startswith("C(") for f in factors):
            raise ValueError(
                f"formula {formula!r}: the interaction {str(t)!r} involves C(); interactions with "
                "categorical dummies are not supported: build the columns yourself or use fixed effects"
            )
        if any(f.startswith("offset(") for f in factors):
            raise ValueError(f"formula {formula!r}: offset() cannot be part of an interaction ({str(t)!r})")
        terms.append(Term(str(t), factors))
    return FormulaSpec(formula, lhs, terms, intercept, offsets, fe, names)


def _categorical_names(spec: FormulaSpec) -> list[str]:
    """The variables a ``C(v)`` term reads directly (``C(region)``): a long table keeps them as
    their labels (strings, categories), whatever their type."""
    out = []
    for t in spec.terms:
        for f in t.factors:
            node = ast.parse(f, mode="eval").body
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "C"
                and len(node.args) == 1
                and isinstance(node.args[0], ast.Name)
            ):
                out.append(node.args[0].id)
    return out


def _rhs_names(spec: FormulaSpec) -> set[str]:
    names: set[str] = set()
    for expr in [f for t in spec.terms for f in t.factors] + spec.offsets:
        names |= _names_in(expr)
    return names


class _Categorical:
    """The value of ``C(v)``: a variable whose distinct values are categories."""

    def __init__(self, arr: xr.DataArray):
        self.arr = arr


def _c(arr, *args, **kwargs):
    if args or kwargs:
        raise ValueError("C() takes one variable, e.g. C(region) (contrasts and levels are not supported)")
    if not isinstance(arr, xr.DataArray):
        raise ValueError("C() takes a variable of the data, e.g. C(region)")
    return _Categorical(arr)


class _Namespace(Mapping):
    """The variables a formula can read: data variables, dims and their coordinates (a
    variable may share a function's name, e.g. ``exp`` for experience: called, the name is
    the function, read, the variable)."""

    def __init__(self, ds: xr.Dataset, formula: str):
        self.ds = ds
        self.formula = formula
        self.funcs = dict(FUNCTIONS, C=_c, offset=lambda v: v)

    def variables(self) -> list[str]:
        dims = [str(d) for d in self.ds.dims]
        coords = [str(c) for c in self.ds.coords if c not in self.ds.dims]
        return [str(v) for v in self.ds.data_vars] + dims + coords

    def __getitem__(self, key):
        if key in self.ds.data_vars:
            return self.ds[key]
        if key in self.ds.dims or key in self.ds.coords:
            return self.ds[key].reset_coords(drop=True)
        raise KeyError(key)

    def __iter__(self):
        return iter(self.variables())

    def __len__(self) -> int:
        return len(self.variables())


def _unknown(name: str, ns: _Namespace, formula: str) -> KeyError:
    avail = ns.variables()
    hit = difflib.get_close_matches(name, avail, n=1, cutoff=0.5)
    hint = f"; did you mean {hit[0]!r}?" if hit else ""
    shown = ", ".join(map(repr, avail[:40])) + (" ..." if len(avail) > 40 else "")
    return KeyError(
        f"formula {formula!r}: {name!r} is not a variable of the data{hint} (its variables and dims: {shown})"
    )


def _eval(expr: str, ns: _Namespace):
    called, variables = _names(expr)
    local = {n: ns.funcs[n] for n in called} | {n: ns[n] for n in variables}
    value = eval(compile(expr, "<formula>", "eval"), {"__builtins__": {}}, local)  # noqa: S307
    if isinstance(value, int | float | np.number):
        return xr.DataArray(float(value))
    return value


def _numeric(name: str, arr: xr.DataArray, formula: str) -> xr.DataArray:
    if arr.dtype.kind == "b":
        return arr.astype(np.float64)
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"formula {formula!r}: {name!r} has dtype {arr.dtype}, which is not numeric; a "
            f"categorical variable enters as C({name}) (dummies) or as a fixed effect after '|'"
        )
    return arr


def _label(v) -> str:
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, np.datetime64 | pd.Timestamp):
        return str(pd.Timestamp(v).date()) if pd.Timestamp(v) == pd.Timestamp(v).normalize() else str(v)
    return str(v)


#: more distinct values than this in C(v) is refused: such a variable is a fixed effect
MAX_LEVELS = 1000


def _levels(arr: xr.DataArray) -> np.ndarray:
    """The sorted distinct non-missing values (one pass over a dask-backed variable); those in
    ``arr.attrs["categories"]`` (a pandas categorical's categories, kept by
    :func:`daskglm.from_long`) first, in that order, as formulaic and pyfixest order them."""
    data = arr.data
    if hasattr(data, "dask"):
        import dask.array as da

        values = np.asarray(da.unique(data.ravel()).compute())
    else:
        values = pd.unique(np.asarray(data).ravel())
    values = pd.Series(values).dropna().unique()
    order = arr.attrs.get("categories")
    if order is not None:
        present = set(values.tolist())
        first = [c for c in order if c in present]
        return np.asarray(first + sorted(present - set(first)))
    return np.asarray(sorted(values))


def _dummies(
    name: str, cat: _Categorical, reduced: bool, feature: str, fitted: tuple | None = None
) -> tuple[xr.DataArray, tuple]:
    """Dummy columns of ``C(v)`` on ``v``'s dims plus the feature dim ``feature`` (lazy when
    ``v`` is dask-backed); NaN where ``v`` is missing. ``fitted``: the ``(levels, reduced)`` of
    the fit, for predictions on new data (a value the fit did not see is an error). Returns the
    columns and their ``(levels, reduced)``."""
    arr = cat.arr.reset_coords(drop=True)
    levels = _levels(arr)
    if fitted is not None:
        unseen = sorted(set(levels.tolist()) - set(np.asarray(fitted[0]).tolist()))
        if unseen:
            raise ValueError(
                f"{name}: value(s) {unseen[:5]} of the new data were not in the fitted data; the "
                "model has no coefficient for them"
            )
        levels, reduced = np.asarray(fitted[0]), fitted[1]
    if len(levels) < 2:
        raise ValueError(f"{name}: the variable has {len(levels)} distinct value(s); C() needs at least two")
    if len(levels) > MAX_LEVELS:
        raise ValueError(
            f"{name}: the variable has {len(levels):,} distinct values; dummy columns for that many "
            f"levels (over {MAX_LEVELS}) belong in a fixed effect: put the dims it is a category of "
            "after '|' (e.g. '| exporter'), which never builds the columns"
        )
    kept = levels[1:] if reduced else levels
    labels = [("T." if reduced else "") + _label(v) for v in kept]
    present = arr.notnull()
    cols = xr.concat([(arr == v).where(present).astype(np.float64) for v in kept], dim=feature)
    cols = cols.assign_coords({feature: labels})
    return cols.transpose(*arr.dims, feature), (levels, reduced)


@dataclass(frozen=True)
class FittedFormula:
    """A formula as fitted: its text and the levels of its ``C()`` terms, to build the same
    covariates from new data (:meth:`GLMResults.predict`)."""

    formula: str
    levels: dict

    def columns(self) -> tuple[list[str], list[str]]:
        """The variables the covariates and offsets read (the response left out), and those of
        them read by ``C(v)``: the columns a long table of new data must hold."""
        spec = parse_formula(self.formula)
        return sorted(_rhs_names(spec)), _categorical_names(spec)

    def derived(self) -> set[str]:
        """The names of the variables the formula derives (its terms and ``offset(...)``s)."""
        spec = parse_formula(self.formula)
        return {t.name for t in spec.terms} | set(spec.offsets)

    def transform(self, ds: xr.Dataset) -> tuple[xr.Dataset, list]:
        """The Dataset with the derived covariates, and the covariates' names (or arrays)."""
        out, _, x, _, _, _ = apply_formula(ds, self.formula, levels=self.levels, response=False)
        return out, x


def apply_formula(
    data,
    formula: str,
    *,
    x=None,
    fe=None,
    offset=None,
    intercept: bool = True,
    dims=None,
    storage_options: dict | None = None,
    progress: bool | None = None,
    levels: dict | None = None,
    response: bool = True,
    columns=(),
    family=None,
):
    """Turn ``(data, formula)`` into the explicit arguments of :func:`daskglm.fit`.

    Parameters
    ----------
    data : xarray.Dataset, zarr path/URL, or a long table (with ``dims``)
        The panel (opened lazily) or a long table, turned into a panel by
        :func:`daskglm.from_long` with only the columns the formula reads.
    formula : str
        fixest's syntax, see the module docstring.
    x, fe : None
        Must not be given with a formula (the formula names the covariates and effects).
    offset : optional
        Added to the formula's ``offset(...)`` terms.
    intercept : bool
        ``False`` drops the intercept too (as ``-1`` does).
    dims : list of str, optional
        The key columns of a long table.
    levels : dict, optional
        The ``C()`` terms' levels of a fit (predictions on new data).
    response : bool
        Evaluate the response (``False`` for predictions on new data).
    columns : sequence
        More inputs of the fit that a long table must keep (exposure, weights names).
    family : str or Family, optional
        The fit's family: a long table also keeps its trials/event variables.

    Returns
    -------
    tuple
        ``(dataset, y, x, fe, offset, intercept)``: a copy of the Dataset with the derived
        variables added under their term names, the response's name, the covariates' names,
        the effects (fixest's string) or ``None``, the offset(s), the intercept flag.
        ``dataset.attrs["daskglm_formula"]`` holds the fields of the :class:`FittedFormula`.
    """
    from .panel import open_data

    spec = parse_formula(formula)
    if x is not None:
        raise TypeError(
            f"x={x!r} given with the formula {formula!r}: the formula names the covariates "
            "(give the family by keyword: dg.fit(data, formula, family=...))"
        )
    if fe is not None and spec.fe is not None:
        raise TypeError(f"fe={fe!r} given with the formula {formula!r}, which has effects after '|'")
    effects = spec.fe if spec.fe is not None else fe
    if dims is not None:
        from .tables import from_long

        keys = [dims] if isinstance(dims, str) else list(dims)
        lhs_names = sorted(_names_in(spec.lhs) - set(keys))
        values = sorted(spec.names - set(keys))
        extra = [o for o in (offset if isinstance(offset, list | tuple) else [offset]) if isinstance(o, str)]
        extra += [c for c in columns if isinstance(c, str)]
        if isinstance(family, Family):
            extra += [v for v in family.aux_sources().values() if isinstance(v, str)]
        values += [v for v in extra if v not in values and v not in keys]
        ds = from_long(
            data, keys, y=lhs_names, values=values, storage_options=storage_options, progress=progress,
            categorical=[c for c in _categorical_names(spec) if c not in keys],
        )  # fmt: skip
    else:
        if is_long_table(data):
            raise needs_dims_error(data, spec.fe)
        ds = open_data(data, storage_options)
    ns = _Namespace(ds, formula)
    needed = spec.names if response else spec.names - (_names_in(spec.lhs) - _rhs_names(spec))
    for name in sorted(needed):
        if name not in ns:
            if name in ns.funcs:
                raise ValueError(f"formula {formula!r}: {name!r} is a function, call it: {name}(...)")
            raise _unknown(name, ns, formula)
    new: dict[str, xr.DataArray] = {}
    passthrough: dict[str, xr.DataArray] = {}

    def derive(name: str, value: xr.DataArray) -> str:
        if name in ds.data_vars:  # a plain variable (a derived name never is one)
            return name
        if name in ds.dims or name in ds.coords:
            passthrough[name] = value.rename(name)
            return name
        new[name] = value
        return name

    # response
    y = None
    if response:
        yval = _eval(spec.lhs, ns)
        if isinstance(yval, _Categorical):
            raise ValueError(f"formula {formula!r}: the response cannot be C(...)")
        y = derive(spec.lhs, _numeric(spec.lhs, yval, formula))
    # covariates
    has_intercept = spec.intercept and intercept
    full_rank_left = not has_intercept and effects is None
    xs: list = []
    categories: dict = {}
    for term in spec.terms:
        values = [_eval(f, ns) for f in term.factors]
        if isinstance(values[0], _Categorical):
            feature = f"{term.name}__level"
            fitted = None if levels is None else levels[term.name]
            val, categories[term.name] = _dummies(term.name, values[0], not full_rank_left, feature, fitted)
            full_rank_left = False
        else:
            val = _numeric(term.factors[0], values[0], formula)
            for f, v in zip(term.factors[1:], values[1:], strict=True):
                val = val * _numeric(f, v, formula)
        if val.ndim == 0:
            if not np.isfinite(float(val)):
                raise ValueError(
                    f"formula {formula!r}: the term {term.name!r} is {float(val)} (a constant that is "
                    "not a finite number: e.g. the log of a variable that is zero or negative); "
                    "check the variable's values or drop the term"
                )
            raise ValueError(
                f"formula {formula!r}: the term {term.name!r} is a constant; the intercept is the "
                "constant term (drop it with -1)"
            )
        xs.append(derive(term.name, val))
    # offsets
    offs = [derive(o, _numeric(o, _eval(o, ns), formula)) for o in spec.offsets]
    if offset is not None:
        offs = list(offset) + offs if isinstance(offset, list | tuple) else [offset] + offs
    offset_out = None if not offs else (offs[0] if len(offs) == 1 else offs)
    out = ds.assign({k: v.reset_coords(drop=True) if v.ndim else v for k, v in new.items()}) if new else ds
    # names that are dims or coordinates cannot be data variables: pass their arrays as such
    xs = [passthrough.get(n, n) for n in xs]
    if y in passthrough:
        raise ValueError(f"formula {formula!r}: the response {y!r} is a dim of the data, not a variable")
    if isinstance(offset_out, str) and offset_out in passthrough:
        offset_out = passthrough[offset_out]
    elif isinstance(offset_out, list):
        offset_out = [passthrough.get(o, o) if isinstance(o, str) else o for o in offset_out]
    cats = {k: [np.asarray(v[0]).tolist(), bool(v[1])] for k, v in categories.items()}  # JSON, as zarr attrs
    out.attrs = dict(ds.attrs, daskglm_formula={"formula": formula, "levels": cats})
    return out, y, xs, effects, offset_out, has_intercept
