"""The TSQR pass as a dask reduction (the graph side of :mod:`daskglm.kernels.qr`).

Declared like the other passes of :mod:`daskglm.graph.passes`: **chunk** =
:func:`~daskglm.kernels.qr.qr_chunk` mapped with ``blockwise`` over the aligned chunks (one packed R
factor per chunk), **combine** =
a tree (``split_every=8``) whose nodes stack their children's R factors and factorise again
(:func:`~daskglm.kernels.qr.qr_combine`), **finalize** = :func:`~daskglm.kernels.qr.qr_unpack` on the
client. The
graph can be computed in the same ``dask.compute`` as an evaluation pass, so a Newton iteration
that needs both is still one pass over the data.
"""

from __future__ import annotations

from functools import partial

import dask.array as da
import numpy as np

from ..kernels.layout import Layout
from ..kernels.qr import qr_chunk, qr_combine, qr_grad_size, qr_length, qr_width
from .passes import _map_chunks, combined_reduction

__all__ = ["qr_graph"]


def qr_graph(layout: Layout, arrays: list, params: np.ndarray, kind: str) -> da.Array:
    """The packed R factor of the weighted design (``kind="design"``) or of ``sqrt(W) [X | r]``
    at ``params`` (``kind="newton"``) over the whole panel, as a 1-D dask array."""
    m, n_grad = qr_width(layout, kind), qr_grad_size(layout, kind)
    func = partial(qr_chunk, layout, np.asarray(params, dtype=np.float64), kind)
    blocks = _map_chunks(func, layout, arrays, qr_length(m, n_grad))
    combine = partial(qr_combine, m=m, n_grad=n_grad)
    return combined_reduction(blocks, layout.ndim, combine, f"daskglm-tsqr-{kind}")
