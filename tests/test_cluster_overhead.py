"""Fixed costs of a fit on a cluster: chunks chosen for the cluster, the tree sum's tasks, the
workers' allocator. Speed itself is measured in ``benchmarks/cluster_overhead.py``."""

from __future__ import annotations

import sys

import dask
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster, futures_of
from helpers import make_panel

import daskglm as dg
from daskglm.frontend.panel import build_panel
from daskglm.graph import passes as graph
from daskglm.runtime.scheduling import (
    ComputeTarget,
    DirectPasses,
    balance_chunks,
    cluster_chunks,
    in_cluster_memory,
    persist_panel,
    worker_malloc_trim,
)
from daskglm.runtime.workers import set_malloc_thresholds


@pytest.mark.parametrize(
    "chunks, threads",
    [
        (((144, 56), (144, 56), (50,)), 2),  # simulate_panel's default for 200 x 200 x 50
        (((50,) * 4, (50,) * 4, (50,)), 2),  # the demo's store
        (((50,) * 4, (50,) * 4, (50,)), 3),
        (((100,) * 8, (100,) * 5, (250,)), 2),  # 1e8 cells: several chunks per thread
        (((7,), (5, 5), (3,)), 4),
        (((2,), (1000,) * 10, (400,)), 6),  # first axis shorter than the chunks wanted
    ],
)
def test_cluster_chunks_are_few_equal_and_a_multiple_of_the_threads(chunks, threads):
    cap = 2**22
    out = cluster_chunks(chunks, threads, max_cells=cap)
    shape = tuple(sum(c) for c in chunks)
    assert tuple(sum(c) for c in out) == shape
    sizes = np.multiply.reduce(np.meshgrid(*out, indexing="ij")).ravel()
    cells = int(np.prod(shape))
    wanted = threads * -(-cells // (threads * cap))  # a multiple of the threads, each <= cap
    assert len(sizes) >= wanted
    assert len(sizes) < 2 * wanted  # not needlessly many
    # nearly equal: no chunk more than 10% (or one row of the first axis) above the mean
    row = np.prod(shape[1:])
    assert sizes.max() <= max(1.1 * sizes.mean(), sizes.mean() + row)
    assert sizes.max() <= max(1.1 * cap, sizes.mean() + row)


def test_cluster_chunks_keep_the_stored_boundaries_when_they_balance():
    out = cluster_chunks(((50,) * 4, (50,) * 4, (50,)), 2)
    assert out == ((100, 100), (200,), (50,))  # two stored chunks per piece along i
    # 144 + 56 cannot be split evenly on its boundaries: equal pieces instead
    assert cluster_chunks(((144, 56), (144, 56), (50,)), 2)[0] == (100, 100)


def test_tree_sum_tasks_and_value():
    ds, x = make_panel(3, "poisson", seed=5)
    panel = build_panel(ds, "y", x, dg.Poisson(), chunks=(1, 2, 1))
    n_chunks = int(np.prod([len(c) for c in panel.chunks]))
    assert n_chunks > graph.SPLIT_EVERY**2  # three levels of the tree
    params = np.full(panel.layout.n_params, 0.01)
    with dask.config.set(scheduler="sync"):  # a dask graph, not the threads' graph.LocalPass
        g = graph.eval_graph(panel.layout, panel.arrays, params, engine="numpy")
    layers = g.__dask_graph__().layers
    ours = sum(len(layer) for name, layer in layers.items() if name.startswith("daskglm-"))
    level1 = -(-n_chunks // graph.SPLIT_EVERY)
    level2 = -(-level1 // graph.SPLIT_EVERY)
    assert ours == n_chunks + level1 + level2 + 1
    # the reference: dask's own sum of the kernel outputs
    blocks = graph._map_chunks(
        graph.partial(graph.eval_kernel("numpy"), panel.layout, params, True, False),
        panel.layout,
        panel.arrays,
        g.shape[0],
    )
    ref = blocks.sum(axis=tuple(range(panel.layout.ndim)))
    got, want = dask.compute(g, ref, scheduler="sync")
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_thresholds_are_set_on_glibc():
    assert set_malloc_thresholds(64 * 2**20)


def test_worker_malloc_setting(monkeypatch):
    assert worker_malloc_trim() == 64 * 2**20
    with dask.config.set({"daskglm.worker-malloc-trim": False}):
        assert worker_malloc_trim() is None
    with dask.config.set({"daskglm.worker-malloc-trim": "lots"}), pytest.raises(ValueError, match="size"):
        worker_malloc_trim()


@pytest.mark.slow
def test_cluster_fit_rechunks_persists_and_sets_up_workers(tmp_path):
    ds, x = make_panel(3, "poisson", seed=7)
    path = str(tmp_path / "p.zarr")
    ds.chunk({"i": 2, "j": 2}).to_zarr(path)
    ref = dg.fit(path, "y", x, "poisson", progress=False)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        res = dg.fit(path, "y", x, "poisson", progress=False, client=client)
        plugins = client.run(lambda dask_worker: "daskglm-worker-malloc" in dask_worker.plugins)
        # a panel the user persisted on the cluster in few chunks is used as is (no second copy)
        few = client.persist(xr.open_zarr(path).chunk({"i": 4, "j": 6}))
        assert in_cluster_memory([few["y"].data])
        kept = dg.fit(few, "y", x, "poisson", progress=False, client=client)
        # in many small chunks (12 for 2 threads) and small beside the workers' memory: rechunked
        many = client.persist(xr.open_zarr(path))
        merged = dg.fit(many, "y", x, "poisson", progress=False, client=client)
    assert "rechunked" not in kept.persist_reason
    assert "rechunked from 12 to 2 chunks" in merged.persist_reason
    for other in (kept, merged):
        np.testing.assert_allclose(other.params, ref.params, rtol=1e-10, atol=1e-12)
    assert all(plugins.values())
    assert res.persisted and "rechunked" in res.persist_reason and "to 2 chunks" in res.persist_reason
    np.testing.assert_allclose(res.params, ref.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.bse, ref.bse, rtol=1e-10)
    assert res.passes == ref.passes


class _FakeClient:
    def nthreads(self):
        return {"tcp://a": 1, "tcp://b": 1}


def test_persist_panel_rechunks_unless_the_user_chose_chunks():
    ds, x = make_panel(3, "poisson", seed=8)
    target = ComputeTarget(_FakeClient(), "fake")
    lazy = build_panel(ds.chunk({"i": 1, "j": 1}), "y", x, dg.Poisson())
    out, note = persist_panel(lazy, target)
    assert out.chunks == cluster_chunks(lazy.chunks, 2) and "rechunked" in note
    assert graph.materialized(out.arrays)
    assert all(a.chunks[: len(s.axes)] == tuple(out.chunks[d] for d in s.axes)
               for a, s in zip(out.arrays, out.layout.args, strict=True))  # fmt: skip
    kept, note = persist_panel(lazy, target, chunks=(1, 1, 4))  # the user's chunks= are kept
    assert kept.chunks == lazy.chunks and note == ""
    numpy_backed = build_panel(ds, "y", x, dg.Poisson(), chunks=(1, 1, 8))
    out, note = persist_panel(numpy_backed, target)  # chunks sent from this process: rechunked too
    assert out.chunks == cluster_chunks(numpy_backed.chunks, 2) and "rechunked" in note


def test_balance_chunks_moves_work_to_the_idle_worker():
    # the benchmark's 4 chunks (52, 20, 20, 8% of the cells) where persist put them: 72% on one
    chunks = [("y0", "x0"), ("y1", "x1"), ("y2", "x2"), ("y3", "x3")]
    cells = [52, 20, 20, 8]
    sizes = {f"{v}{i}": c for i, c in enumerate(cells) for v in "yx"}
    who_has = {f"{v}{i}": ["a" if i < 2 else "b"] for i in range(4) for v in "yx"}
    threads = {"a": 1, "b": 1}
    out = balance_chunks(chunks, who_has, sizes, threads, budget=10**6)
    assert out == {"a": [0], "b": [1, 2, 3]}  # 52 / 48, as two threads share them
    # nothing may be fetched: each chunk stays where its bytes are
    assert balance_chunks(chunks, who_has, sizes, threads, budget=0) == {"a": [0, 1], "b": [2, 3]}
    # a small input held elsewhere does not move a chunk off the worker holding its bulk
    who_has["x2"], sizes["x2"] = ["a"], 1
    assert balance_chunks(chunks, who_has, sizes, threads, budget=0) == {"a": [0, 1], "b": [2, 3]}
    # two threads on one worker take twice the work: (104 + 16) / 2 beside 40 + 21
    assert balance_chunks(chunks, who_has, sizes, {"a": 2, "b": 1}, budget=10**6) == {
        "a": [0, 3],
        "b": [1, 2],
    }


@pytest.mark.slow
def test_direct_passes_equal_threads_and_tasks_bit_for_bit(tmp_path):
    """A persisted panel's passes run on the workers without tasks (``DirectPasses``): the
    estimates, standard errors and log-likelihood are the threaded scheduler's to the bit, and
    the same as the task path's (``daskglm.direct-passes: False``); chunks whose inputs sit on
    another worker are computed after fetching them; pending futures fall back to tasks."""
    ds, x = make_panel(3, "poisson", seed=11, exposure=True)
    path = str(tmp_path / "p.zarr")
    ds.chunk({"i": 4, "j": 3}).to_zarr(path)  # 4 chunks for 2 threads: used as persisted
    on_threads = dask.persist(xr.open_zarr(path), scheduler="threads")[0]
    ref = dg.fit(on_threads, "y", x, "poisson", exposure="expo", progress=False)
    counts = []
    original = DirectPasses.close

    def close(self):
        counts.append((self.runs, self.fallbacks))
        return original(self)

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        persisted = client.persist(xr.open_zarr(path))
        client.gather(futures_of(persisted))
        DirectPasses.close = close
        try:
            direct = dg.fit(persisted, "y", x, "poisson", exposure="expo", progress=False, client=client)
            with dask.config.set({"daskglm.direct-passes": False}):
                tasks = dg.fit(persisted, "y", x, "poisson", exposure="expo", progress=False, client=client)
            # the chunks' futures not yet finished: the runner leaves the pass to tasks
            runner = DirectPasses(client)
            slow = client.submit(lambda: (__import__("time").sleep(1), np.ones(3))[1], pure=False)
            assert runner.run(graph.LocalPass(np.sum, [(slow,)]), 0.1) is None and runner.fallbacks == 1
        finally:
            DirectPasses.close = original
    assert counts and counts[0][0] == direct.passes and counts[0][1] == 0
    assert direct.passes == ref.passes == tasks.passes
    for res in (direct, tasks):
        np.testing.assert_array_equal(res.params, ref.params)
        np.testing.assert_array_equal(res.bse, ref.bse)
        assert res.llf == ref.llf


@pytest.mark.slow
def test_direct_passes_give_up_quickly_on_workers_the_client_cannot_reach():
    """Where the client reaches only the scheduler (a gateway, a firewall), the first direct
    request would wait out distributed's 30 s connect timeout: a probe with a short timeout
    decides once per fit, and the passes run as tasks."""
    import time

    from daskglm.runtime import scheduling

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        runner = DirectPasses(client)
        (worker,) = client.scheduler_info()["workers"]
        assert client.sync(runner._reachable, [worker]) is True
        t0 = time.perf_counter()
        # a TEST-NET-1 address (RFC 5737): never routed, so a connection can only fail or hang
        assert client.sync(runner._reachable, ["tcp://192.0.2.1:8786"]) is False
        assert time.perf_counter() - t0 < scheduling.PROBE_TIMEOUT + 2
