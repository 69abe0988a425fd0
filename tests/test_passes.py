"""One Newton iteration = one pass over the data = one ``dask.compute``; building is lazy.

A counting scheduler (dask's threaded ``get``, wrapped) sees every compute; a raising one
proves that building the panel and the graphs triggers none (flox's ``raise_if_dask_computes``).
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from helpers import make_panel

import daskglm as dg
from daskglm.frontend.panel import build_panel
from daskglm.graph import passes as graph


class CountingScheduler:
    def __init__(self, fail: bool = False):
        self.calls = 0
        self.fail = fail

    def __call__(self, dsk, keys, **kwargs):
        if self.fail:
            raise AssertionError("a dask compute was triggered where none should be")
        self.calls += 1
        return dask.threaded.get(dsk, keys, **kwargs)


@pytest.mark.parametrize("family", ["gaussian", "poisson", "binomial", "negative_binomial", "exponential"])
def test_one_compute_per_newton_iteration(family):
    ds, x = make_panel(3, family, seed=11)
    fam = {"binomial": dg.Binomial(trials="trials"), "exponential": dg.Exponential(event="event")}.get(
        family, family
    )
    counter = CountingScheduler()
    computes_at_row = []
    with dask.config.set(scheduler=counter):
        res = dg.fit(
            ds, "y", x, fam, chunks=(3, 3, 4), callback=lambda row: computes_at_row.append(counter.calls)
        )
    # setup pass + one pass per accepted iteration (no halving here) + the final pass
    assert res.converged
    assert counter.calls == res.passes == res.n_iter + 2
    assert np.all(np.diff(computes_at_row) == 1), computes_at_row
    assert list(res.history["passes"]) == computes_at_row


def test_building_triggers_no_compute():
    ds, x = make_panel(3, "poisson", seed=12)
    ds = ds.chunk({"i": 3, "j": 2})
    with dask.config.set(scheduler=CountingScheduler(fail=True)):
        panel = build_panel(ds, "y", x, dg.Poisson(), chunks=(3, 2, 4))
        graph.setup_graph(panel.layout, panel.arrays)
        graph.eval_graph(panel.layout, panel.arrays, np.zeros(panel.layout.n_params))
        graph.cluster_graph(panel.layout, panel.arrays, np.zeros(panel.layout.n_params), (0, 1))


@pytest.mark.parametrize("shape", [(200, 200, 50), (37, 1000, 30), (5, 3), (3000, 400), (2, 2000, 600)])
def test_default_chunks_of_in_memory_arrays_are_contiguous_slabs(shape):
    """Numpy inputs are cut into C-ordered slabs by default (leading axis split, trailing axes
    whole) so every chunk is a contiguous view of the user's array: the compiled kernel reads it
    in place, without a copy per pass. Where one slice of the first axis exceeds the default
    chunk size, dask's ``"auto"`` chunks are used instead (and bound the chunk's size)."""
    chunks = graph.full_chunks(shape)
    cells = int(np.prod(shape))
    largest = int(np.prod([max(c) for c in chunks]))
    trailing = int(np.prod(shape[1:]))
    if trailing <= graph.DEFAULT_CHUNK_CELLS:
        assert all(len(c) == 1 for c in chunks[1:])
        assert largest <= max(graph.DEFAULT_CHUNK_CELLS, trailing)
        assert len(chunks[0]) == -(-cells // (max(chunks[0]) * trailing))
        arr = np.zeros(shape)
        view = graph.align_arrays([arr], [tuple(range(len(shape)))], [False], chunks)[0]
        blocks = [v for v in dict(view.__dask_graph__()).values() if isinstance(v, np.ndarray)]
        assert len(blocks) == len(chunks[0])
        assert all(b.flags.c_contiguous and np.shares_memory(b, arr) for b in blocks)
    else:
        assert largest <= graph.DEFAULT_CHUNK_CELLS * 1.01
