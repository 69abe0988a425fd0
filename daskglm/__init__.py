"""daskglm: generalized linear models on panels too large for one machine's memory.

>>> import daskglm as dg
>>> res = dg.fit(ds, y="y", x=["x_ijk", "x_ij", "x_i"], family="poisson", exposure="t")

The public names are imported on first use (module ``__getattr__``, PEP 562): ``import daskglm``
itself loads nothing but this file, and a dask worker that unpickles a kernel of
``daskglm.kernels`` loads that layer only, not xarray, pandas or the API (a worker's own memory is
what limits how small its memory limit can be: ``benchmarks/GRAVITY.md``, "1e8 cells out of
core"). ``from daskglm import fit`` and ``dg.fit`` work as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers and IDEs
    from .api.fitting import SeparationWarning, fit
    from .api.registry import FAMILIES, SOLVERS
    from .api.report import coefplot, etable, plot_convergence, tidy
    from .api.results import GLMResults
    from .frontend.tables import from_long, write_zarr
    from .kernels.checks import DataError
    from .kernels.families import Binomial, Exponential, Family, Gaussian, NegativeBinomial, Poisson
    from .runtime.scheduling import ClusterLostError
    from .solvers.base import ConvergenceWarning

#: public name -> the module (relative to this package) that defines it
_SOURCES = {
    "fit": "api.fitting",
    "SeparationWarning": "api.fitting",
    "FAMILIES": "api.registry",
    "SOLVERS": "api.registry",
    "coefplot": "api.report",
    "etable": "api.report",
    "plot_convergence": "api.report",
    "tidy": "api.report",
    "GLMResults": "api.results",
    "from_long": "frontend.tables",
    "write_zarr": "frontend.tables",
    "DataError": "kernels.checks",
    "Family": "kernels.families",
    "Gaussian": "kernels.families",
    "Poisson": "kernels.families",
    "Binomial": "kernels.families",
    "NegativeBinomial": "kernels.families",
    "Exponential": "kernels.families",
    "ClusterLostError": "runtime.scheduling",
    "ConvergenceWarning": "solvers.base",
}

__all__ = [
    "fit",
    "from_long",
    "write_zarr",
    "etable",
    "coefplot",
    "tidy",
    "plot_convergence",
    "GLMResults",
    "Family",
    "Gaussian",
    "Poisson",
    "Binomial",
    "NegativeBinomial",
    "Exponential",
    "FAMILIES",
    "SOLVERS",
    "DataError",
    "ClusterLostError",
    "ConvergenceWarning",
    "SeparationWarning",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{source}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
