"""The double-double Gaussian gradient pass as a dask reduction (the graph side of
:mod:`daskglm.kernels.accurate`).

Declared like the TSQR pass of :mod:`daskglm.graph.qr`: **chunk** =
:func:`~daskglm.kernels.accurate.accurate_chunk` mapped with ``blockwise`` over the aligned chunks (one
packed (hi, lo) gradient per chunk), **combine** = a tree (``split_every=8``) whose nodes add
their children's pairs in double-double (:func:`~daskglm.kernels.accurate.accurate_combine`: a float64
tree sum would bring back the rounding the chunks avoided), **finalize** =
:func:`~daskglm.kernels.accurate.accurate_unpack` on the client. It is computed in the same
``dask.compute`` as an evaluation pass.
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

from ..kernels.accurate import (
    accurate_chunk,
    accurate_combine,
    accurate_hessian_chunk,
    accurate_hessian_length,
    accurate_length,
)
from ..kernels.layout import Layout
from .passes import _map_chunks, combined_reduction

__all__ = ["accurate_graph", "accurate_hessian_graph"]


def accurate_graph(layout: Layout, arrays: list, params: np.ndarray) -> da.Array:
    """``X' w (y - offset - X b)`` at ``params`` over the whole panel, packed as (hi, lo)
    halves in a 1-D dask array (Gaussian family)."""
    func = partial(accurate_chunk, layout, np.asarray(params, dtype=np.float64))
    blocks = _map_chunks(func, layout, arrays, accurate_length(layout))
    return _reduce(blocks, layout, layout.n_beta, "daskglm-accurate-gradient")


def accurate_hessian_graph(layout: Layout, arrays: list) -> da.Array:
    """``X' w X`` over the whole panel, packed as the (hi, lo) halves of the row-major matrix
    in a 1-D dask array (Gaussian family; :func:`~daskglm.kernels.accurate.accurate_hessian_chunk`)."""
    func = partial(accurate_hessian_chunk, layout)
    blocks = _map_chunks(func, layout, arrays, accurate_hessian_length(layout))
    return _reduce(blocks, layout, layout.n_beta**2, "daskglm-accurate-hessian")


def _reduce(blocks: da.Array, layout: Layout, n: int, name: str) -> da.Array:
    return combined_reduction(blocks, layout.ndim, partial(accurate_combine, n=n), name)
