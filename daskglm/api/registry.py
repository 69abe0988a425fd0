"""The one registry of families and solvers: validation, dispatch, the CLI and tests all read it.

* :data:`FAMILIES` (name -> class) and :data:`FAMILY_ALIASES`; each family declares its
  constructor keywords as :attr:`Family.options <daskglm.kernels.families.Family.options>`.
  :func:`resolve_family` turns a name (or alias), class or instance plus options into an instance;
  ``dg.fit`` and ``daskglm fit`` both call it.
* :data:`SOLVERS` (name -> :class:`SolverSpec`); a solver's options are the fields of its config
  dataclass (:meth:`SolverSpec.options`, help text from the class's numpydoc ``Attributes``).

Adding a family or a solver is one entry here; the command line picks up its name and options.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, fields

from ..kernels.families import Binomial, Exponential, Family, Gaussian, NegativeBinomial, Poisson
from ..solvers.gradient import (
    AdamConfig,
    GradientDescentConfig,
    LBFGSConfig,
    adam,
    gradient_descent,
    lbfgs,
)
from ..solvers.newton import NewtonConfig, newton
from ..solvers.newton_schulz import NewtonSchulzConfig, newton_schulz

__all__ = [
    "FAMILIES",
    "FAMILY_ALIASES",
    "GENERIC_SOLVER_OPTIONS",
    "SOLVERS",
    "ConfigOption",
    "SolverSpec",
    "check_options",
    "family_class",
    "unknown_arguments",
    "resolve_family",
    "resolve_solver",
]

#: family name -> class; ``family="poisson"`` means ``FAMILIES["poisson"]()``
FAMILIES: dict[str, type[Family]] = {
    cls.name: cls for cls in (Gaussian, Poisson, Binomial, NegativeBinomial, Exponential)
}

#: other accepted spellings (after lower-casing, with ``-`` and spaces read as ``_``)
FAMILY_ALIASES: dict[str, str] = {
    "normal": "gaussian",
    "logit": "binomial",
    "logistic": "binomial",
    "nb2": "negative_binomial",
    "negbin": "negative_binomial",
}

#: solver config fields that ``fit`` takes as its own arguments (``tol=``, ``max_iter=``)
GENERIC_SOLVER_OPTIONS = ("tol", "max_iter")


@dataclass(frozen=True)
class ConfigOption:
    """One field of a solver's config dataclass: its name, how to parse it, default and help."""

    name: str
    parse: Callable[[str], object]
    default: object
    help: str


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _parser_of(hint) -> Callable[[str], object]:
    """The command-line parser of a field annotated ``hint`` (``X | None`` parses as ``X``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else str
    if hint is bool:
        return _parse_bool
    return hint if hint in (int, float, str) else str


def _attribute_help(cls: type) -> dict[str, str]:
    """Each entry of the numpydoc ``Attributes`` section of ``cls``, as one line."""
    lines = (inspect.getdoc(cls) or "").splitlines()
    out: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for k, line in enumerate(lines):
        underline = k + 1 < len(lines) and set(lines[k + 1].strip()) == {"-"}
        if underline and not line.startswith(" "):
            inside = line.strip() == "Attributes"
            names = []
            continue
        if not inside or set(line.strip()) == {"-"}:
            continue
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(" : ")[0].split(",")]
            out.update({n: "" for n in names})
        elif line.strip():
            for n in names:
                out[n] = f"{out[n]} {line.strip()}".strip()
    return {n: re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "") for n, text in out.items()}


@dataclass(frozen=True)
class SolverSpec:
    """A solver: its function, its config class, and whether it needs the Hessian each pass.

    ``run(objective, start, config, callback) -> SolverResult``; ``config`` is a frozen
    dataclass with at least ``tol`` and ``max_iter`` (whose default is the solver's own).
    """

    name: str
    run: Callable
    config: type
    uses_hessian: bool
    description: str
    #: how it fits a model with fixed effects (``fe=``): ``"concentrated"`` (it takes the
    #: objective's ``direction``, the Newton step with the effects concentrated out),
    #: ``"parameters"`` (gradient-only: every effect level is a parameter and the objective
    #: builds the preconditioner), or ``None`` (not supported, for the reason in ``fe_refusal``)
    fixed_effects: str | None = None
    fe_refusal: str = ""

    def check_fixed_effects(self) -> str:
        """The solver's :attr:`fixed_effects` mode; a clear error when it has none."""
        if self.fixed_effects is None:
            raise ValueError(
                f"solver={self.name!r} cannot fit models with fe=: {self.fe_refusal}. Use "
                "solver='newton' (the default: Newton with the effects concentrated out), or "
                "solver='lbfgs' or solver='gd' (gradient-only, every effect level a parameter)"
            )
        return self.fixed_effects

    def options(self) -> dict[str, ConfigOption]:
        """The solver's own options: its config fields other than :data:`GENERIC_SOLVER_OPTIONS`."""
        hints = typing.get_type_hints(self.config)
        helps = _attribute_help(self.config)
        return {
            f.name: ConfigOption(
                f.name,
                _parser_of(hints.get(f.name, str)),
                None if f.default is MISSING else f.default,
                helps.get(f.name, ""),
            )
            for f in fields(self.config)
            if f.name not in GENERIC_SOLVER_OPTIONS
        }


#: solver name -> spec
SOLVERS: dict[str, SolverSpec] = {
    "newton": SolverSpec(
        "newton",
        newton,
        NewtonConfig,
        True,
        "Newton-Raphson with step halving (one P x P solve per iteration)",
        fixed_effects="concentrated",
    ),
    "lbfgs": SolverSpec(
        "lbfgs",
        lbfgs,
        LBFGSConfig,
        False,
        "scipy's L-BFGS-B on the client, full-matrix preconditioned (LL and gradient per pass)",
        fixed_effects="parameters",
    ),
    "gd": SolverSpec(
        "gd",
        gradient_descent,
        GradientDescentConfig,
        False,
        "preconditioned gradient ascent, Armijo line search or a fixed step (inverse-free)",
        fixed_effects="parameters",
    ),
    "adam": SolverSpec(
        "adam",
        adam,
        AdamConfig,
        False,
        "Adam in whitened coordinates with a decaying rate (inverse-free)",
        fe_refusal="every effect level is one of its coordinates, and its sign-like steps after "
        "each rebuild of the preconditioner move all of them at once by the learning rate: on "
        "fixest's trade panel (Origin^Product + Destination) it left the optimum it had nearly "
        "reached and stopped 40% off; where it converges it needs 10-20 times the passes",
    ),
    "newton_schulz": SolverSpec(
        "newton_schulz",
        newton_schulz,
        NewtonSchulzConfig,
        True,
        "Newton-Raphson with H^-1 g from Newton-Schulz iterations: products only (inverse-free)",
        fe_refusal="its Newton-Schulz iterations work on the full Hessian, and with fe= every effect "
        "level is a parameter (a Hessian over millions of levels is never formed)",
    ),
}


def check_options(
    given: Iterable[str], valid: Iterable[str], owner: str, spell: Callable[[str], str] = repr
) -> None:
    """Refuse options of ``given`` that are not in ``valid`` with a message naming ``owner``'s
    options; ``spell`` writes an option's name (``repr`` for the API, ``--name`` for the CLI)."""
    valid = list(valid)
    bad = [n for n in given if n not in valid]
    if bad:
        theirs = f"its options are {', '.join(map(spell, valid))}" if valid else "it takes no options"
        raise ValueError(
            f"{', '.join(map(spell, bad))} {'is not an option' if len(bad) == 1 else 'are not options'} "
            f"of {owner}; {theirs}"
        )


def unknown_arguments(
    unknown: Iterable[str], arguments: Iterable[str], solver: str, options: Iterable[str]
) -> str:
    """The message for keyword arguments of ``fit`` that are neither its own (``arguments``) nor
    options of the chosen ``solver`` (``options``): each with the closest name of either, when one
    is close (a misspelt ``weigths=`` -> ``weights``), then both lists."""
    arguments, options = sorted(arguments), sorted(options)
    parts = []
    for name in unknown:
        owners = [s.name for s in SOLVERS.values() if name in s.options()]
        close = difflib.get_close_matches(name, arguments + options, n=1, cutoff=0.7)
        if owners:
            parts.append(f"{name!r} (an option of solver {', '.join(map(repr, owners))}, not of {solver!r})")
        elif close:
            where = "an argument of fit" if close[0] in arguments else f"an option of solver {solver!r}"
            parts.append(f"{name!r} (did you mean {close[0]!r}, {where}?)")
        else:
            parts.append(repr(name))
    theirs = ", ".join(options) if options else "none"
    return (
        f"fit() got unknown keyword argument(s) {', '.join(parts)}. fit's arguments are "
        f"{', '.join(arguments)}; solver {solver!r} takes the options {theirs}"
    )


def family_class(name: str | type) -> type[Family]:
    """The :class:`Family` subclass named ``name`` (a key of :data:`FAMILIES` or an alias)."""
    if isinstance(name, type) and issubclass(name, Family):
        return name
    if isinstance(name, str):
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        key = FAMILY_ALIASES.get(key, key)
        if key in FAMILIES:
            return FAMILIES[key]
    aliases = ", ".join(f"{a!r} ({c})" for a, c in FAMILY_ALIASES.items())
    raise ValueError(
        f"family={name!r} is not known; use one of {', '.join(map(repr, FAMILIES))} (aliases: "
        f"{aliases}) or an instance such as dg.Binomial(trials='n')"
    )


def resolve_family(
    family: str | Family | type, options: dict | None = None, *, spell: Callable[[str], str] = repr
) -> Family:
    """A :class:`Family` instance from a name (or alias), a class or an instance.

    ``options`` are constructor keywords of the family; only those it declares in
    ``Family.options`` are accepted (``spell`` writes their names in the error).
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if isinstance(family, Family):
        if options:
            raise ValueError(
                f"options {', '.join(map(spell, options))} are given beside the family instance "
                f"{family!r}; set them on the instance (or give the family by name)"
            )
        return family
    cls = family_class(family)
    check_options(options, [o.name for o in cls.options], f"family {cls.name!r}", spell)
    return cls(**options)


def resolve_solver(solver: str) -> SolverSpec:
    """The :class:`SolverSpec` for ``solver``."""
    spec = SOLVERS.get(str(solver).lower())
    if spec is None:
        raise ValueError(f"solver={solver!r} is not known; use one of {', '.join(map(repr, SOLVERS))}")
    return spec
