"""The one registry of families and solvers: validation, dispatch and tests all read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .families import Binomial, Exponential, Family, Gaussian, NegativeBinomial, Poisson
from .solvers.newton import NewtonConfig, newton

__all__ = ["FAMILIES", "SOLVERS", "SolverSpec", "resolve_family", "resolve_solver"]

#: family name -> class; ``family="poisson"`` means ``FAMILIES["poisson"]()``
FAMILIES: dict[str, type[Family]] = {
    cls.name: cls for cls in (Gaussian, Poisson, Binomial, NegativeBinomial, Exponential)
}


@dataclass(frozen=True)
class SolverSpec:
    """A solver: its function, its config class, and whether it needs the Hessian each pass."""

    name: str
    run: Callable
    config: type
    uses_hessian: bool
    description: str


#: solver name -> spec
SOLVERS: dict[str, SolverSpec] = {
    "newton": SolverSpec(
        "newton",
        newton,
        NewtonConfig,
        True,
        "Newton-Raphson with step halving (one P x P solve per iteration)",
    ),
}


def resolve_family(family: str | Family | type) -> Family:
    """A :class:`Family` instance from a name, a class or an instance."""
    if isinstance(family, Family):
        return family
    if isinstance(family, type) and issubclass(family, Family):
        return family()
    if isinstance(family, str):
        key = family.lower().replace("-", "_").replace(" ", "_")
        aliases = {
            "nb2": "negative_binomial",
            "negbin": "negative_binomial",
            "normal": "gaussian",
            "logit": "binomial",
            "logistic": "binomial",
        }
        key = aliases.get(key, key)
        if key in FAMILIES:
            return FAMILIES[key]()
    raise ValueError(
        f"family={family!r} is not known; use one of {', '.join(map(repr, FAMILIES))} or an "
        "instance such as dg.Binomial(trials='n')"
    )


def resolve_solver(solver: str) -> SolverSpec:
    """The :class:`SolverSpec` for ``solver``."""
    spec = SOLVERS.get(str(solver).lower())
    if spec is None:
        raise ValueError(f"solver={solver!r} is not known; use one of {', '.join(map(repr, SOLVERS))}")
    return spec
