"""The one registry of families and solvers: validation, dispatch and tests all read it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .families import Binomial, Exponential, Family, Gaussian, NegativeBinomial, Poisson
from .solvers.gradient import (
    AdamConfig,
    GradientDescentConfig,
    LBFGSConfig,
    adam,
    gradient_descent,
    lbfgs,
)
from .solvers.newton import NewtonConfig, newton

__all__ = ["FAMILIES", "SOLVERS", "SolverSpec", "resolve_family", "resolve_solver"]

#: family name -> class; ``family="poisson"`` means ``FAMILIES["poisson"]()``
FAMILIES: dict[str, type[Family]] = {
    cls.name: cls for cls in (Gaussian, Poisson, Binomial, NegativeBinomial, Exponential)
}


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


#: solver name -> spec
SOLVERS: dict[str, SolverSpec] = {
    "newton": SolverSpec(
        "newton",
        newton,
        NewtonConfig,
        True,
        "Newton-Raphson with step halving (one P x P solve per iteration)",
    ),
    "lbfgs": SolverSpec(
        "lbfgs",
        lbfgs,
        LBFGSConfig,
        False,
        "scipy's L-BFGS-B on the client, diagonally preconditioned (LL and gradient per pass)",
    ),
    "gd": SolverSpec(
        "gd",
        gradient_descent,
        GradientDescentConfig,
        False,
        "preconditioned gradient ascent, Armijo line search or a fixed step (inverse-free)",
    ),
    "adam": SolverSpec(
        "adam",
        adam,
        AdamConfig,
        False,
        "Adam on standardised coefficients with a decaying rate (inverse-free)",
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
