"""daskglm: generalized linear models on panels too large for one machine's memory.

>>> import daskglm as dg
>>> res = dg.fit(ds, y="y", x=["x_ijk", "x_ij", "x_i"], family="poisson", exposure="t")
"""

from .api.fitting import SeparationWarning, fit
from .api.registry import FAMILIES, SOLVERS
from .api.report import coefplot, etable, plot_convergence, tidy
from .api.results import GLMResults
from .frontend.tables import from_long, write_zarr
from .kernels.checks import DataError
from .kernels.families import Binomial, Exponential, Family, Gaussian, NegativeBinomial, Poisson
from .runtime.scheduling import ClusterLostError
from .solvers.base import ConvergenceWarning

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
