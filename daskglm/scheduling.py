"""Where a fit's passes run (``client=``) and whether the panel is kept in cluster memory.

``client=None``
    The active ``distributed.Client`` if there is one; else the scheduler named by dask's
    configuration (``DASK_SCHEDULER_ADDRESS`` / ``scheduler-address``); else dask's local
    threaded scheduler.
``client="local"``
    A ``distributed.LocalCluster`` sized to the machine (one worker process per two cores, the
    machine's memory shared between them), closed when the fit returns.
``client="tcp://host:8786"`` / ``"tls://..."``
    Connect to a running scheduler; TLS settings come from dask's configuration
    (``distributed.comm.tls.*``) or from ``security=``.
``client=Client(...)``
    Used as is (and left open).

On a distributed cluster every pass is computed as futures watched by a :class:`PassWatchdog`:
when the cluster has had no workers for longer than ``daskglm.no-workers-timeout`` (dask
configuration, default ``"60s"``; environment ``DASK_DASKGLM__NO_WORKERS_TIMEOUT``), or the
scheduler is lost, the pass is cancelled and the fit raises :class:`ClusterLostError`, which
says how to resume from the checkpoint. A worker lost while others live is not an error: dask
recomputes its tasks on the others. On dask's threaded scheduler passes run as plain
``dask.compute`` calls, with no watchdog.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dask
from dask.utils import parse_timedelta

from . import graph

__all__ = [
    "ClusterLostError",
    "ComputeTarget",
    "PassWatchdog",
    "compute_target",
    "no_workers_timeout",
    "persist_decision",
]

log = logging.getLogger("daskglm")

#: dask configuration key: how long a pass may wait while the cluster has no workers
NO_WORKERS_TIMEOUT_KEY = "daskglm.no-workers-timeout"
dask.config.update_defaults({"daskglm": {"no-workers-timeout": "60s"}})


class ClusterLostError(ConnectionError):
    """The cluster running a fit lost all its workers (for longer than the grace period) or its
    scheduler; the message says how to resume from the checkpoint."""


def no_workers_timeout() -> float:
    """Seconds a pass waits while the cluster has no workers (``daskglm.no-workers-timeout``)."""
    value = dask.config.get(NO_WORKERS_TIMEOUT_KEY)
    try:
        seconds = parse_timedelta(value, default="seconds")
    except (TypeError, ValueError, KeyError):
        seconds = None
    if seconds is None or not seconds > 0:
        raise ValueError(
            f"dask config {NO_WORKERS_TIMEOUT_KEY}={value!r} is not a positive duration; give e.g. "
            "'60s', '10m', '1h' or a number of seconds"
        )
    return float(seconds)


def _resume_hint(checkpoint) -> str:
    """How to carry on after the cluster is lost, given the fit's ``checkpoint=``."""
    if checkpoint is None:
        return (
            "no checkpoint= was given, so the fit must start again: pass checkpoint='state.json' "
            "(daskglm fit --checkpoint state.json) so that a fit which loses its cluster can resume "
            "from its last finished iteration"
        )
    path = os.fspath(checkpoint)
    try:
        with open(path) as f:
            iteration = int(json.load(f)["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return (
            f"call the same fit again with checkpoint={path!r} (no iteration had been saved there "
            "yet, so it starts afresh)"
        )
    return (
        f"call the same fit again with checkpoint={path!r}: it resumes from iteration {iteration}, "
        "the last one saved there"
    )


@dataclass
class PassWatchdog:
    """Computes a pass on a distributed client without waiting forever.

    The graphs are submitted as futures and awaited in slices of ``poll`` seconds; between
    slices the scheduler is asked how many workers it has. After ``timeout`` seconds without
    any (or when the connection to the scheduler is lost) the futures are cancelled and
    :class:`ClusterLostError` is raised. Installed by :func:`compute_target` as
    :data:`daskglm.graph.PASS_COMPUTE` for the duration of a fit.
    """

    client: object
    timeout: float
    checkpoint: str | os.PathLike | None = None

    @property
    def poll(self) -> float:
        return min(1.0, self.timeout / 5)

    def __call__(self, graphs: tuple, optimize: bool) -> tuple:
        from distributed.client import FutureCancelledError, FuturesCancelledError

        futures = self.client.compute(list(graphs), optimize_graph=optimize)
        try:
            self._wait(futures)
            return tuple(self.client.gather(futures))
        except (FutureCancelledError, FuturesCancelledError) as err:
            if self.client.status == "running":
                raise
            raise ClusterLostError(self._message("lost its connection to the scheduler")) from err
        finally:
            if self.client.status == "running" and any(f.status == "pending" for f in futures):
                with contextlib.suppress(Exception):
                    self.client.cancel(futures)

    def _workers(self) -> tuple[int, int]:
        """Workers the scheduler knows of, and how many of them run tasks (not paused at their
        memory limit, not closing); ``(0, 0)`` when it cannot be reached."""
        if self.client.status != "running":
            return 0, 0
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except (OSError, TimeoutError):
            return 0, 0
        running = sum(1 for w in workers.values() if w.get("status", "running") == "running")
        return len(workers), running

    def _wait(self, futures: list) -> None:
        from distributed import wait

        since = None  # when the cluster was first seen without workers
        while True:
            try:
                with self.client.as_current():
                    wait(futures, timeout=self.poll)
                return
            except TimeoutError:
                pass
            total, running = self._workers()
            if running:
                since = None
                continue
            now = time.monotonic()
            if since is None:
                since = now
                log.warning(
                    "daskglm: the cluster has no running workers (%d paused or closing); waiting up "
                    "to %g s (%s)",
                    total,
                    self.timeout,
                    NO_WORKERS_TIMEOUT_KEY,
                )
            if now - since >= self.timeout:
                what = (
                    f"has had no workers for {now - since:.0f} s while a pass was waiting"
                    if not total
                    else f"has had no running worker for {now - since:.0f} s while a pass was "
                    f"waiting: all {total} are paused (at their memory limit) or closing. Give the "
                    "workers more memory (or more workers), or smaller chunks"
                )
                raise ClusterLostError(self._message(what))

    def _message(self, what: str) -> str:
        address = getattr(getattr(self.client, "scheduler", None), "address", None) or "?"
        return (
            f"the dask cluster at {address} {what} ({NO_WORKERS_TIMEOUT_KEY} is "
            f"{self.timeout:g} s), so the fit stops instead of waiting forever. Start workers again "
            f"(e.g. `dask worker {address}`), then {_resume_hint(self.checkpoint)}. Allow longer "
            f"with dask.config.set({{{NO_WORKERS_TIMEOUT_KEY!r}: '10m'}}) or "
            "DASK_DASKGLM__NO_WORKERS_TIMEOUT=10m"
        )


@dataclass
class ComputeTarget:
    """The client the passes run on (``None``: dask's threaded scheduler) and how it was chosen."""

    client: object | None
    description: str

    def worker_memory(self) -> int | None:
        """Total memory limit of the workers in bytes (None when unknown or unlimited)."""
        if self.client is None:
            return None
        workers = self.client.scheduler_info().get("workers", {})
        limits = [w.get("memory_limit") or 0 for w in workers.values()]
        if not limits or min(limits) <= 0:
            return None
        return int(sum(limits))


def _connect(address: str, security):
    from distributed import Client

    try:
        return Client(address, security=security, timeout="20s", set_as_default=False)
    except (OSError, TypeError, ValueError) as err:  # TypeError: tls:// without an SSL context
        raise ConnectionError(
            f"client={address!r}: cannot reach a dask scheduler there ({err}). Start one with "
            "`dask scheduler` (see cluster/README.md), check the address and port, and for "
            "tls:// give the certificates via security= or dask's distributed.comm.tls settings"
        ) from err


@contextlib.contextmanager
def compute_target(client=None, security=None, checkpoint=None) -> Iterator[ComputeTarget]:
    """Resolve ``client=`` (see the module docstring) for the duration of a fit.

    On a distributed client the fit's passes are computed by a :class:`PassWatchdog`, whose
    :class:`ClusterLostError` names ``checkpoint`` (the fit's ``checkpoint=``) to resume from.
    """
    timeout = no_workers_timeout()
    owned = []
    try:
        if client is None:
            try:
                from distributed import get_client

                c = get_client()
                target = ComputeTarget(c, f"active client {c.scheduler.address}")
            except (ImportError, ValueError):
                address = dask.config.get("scheduler-address", None)
                if address:
                    c = _connect(address, security)
                    owned.append(c)
                    target = ComputeTarget(c, f"scheduler {address} (from dask config)")
                else:
                    target = ComputeTarget(None, "dask's threaded scheduler")
        elif isinstance(client, str) and client == "local":
            from distributed import Client, LocalCluster

            cores = os.cpu_count() or 1
            n_workers = max(1, cores // 2)
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=max(1, cores // n_workers),
                dashboard_address=":0",
            )
            owned.append(cluster)
            c = Client(cluster, set_as_default=False)
            owned.insert(0, c)
            target = ComputeTarget(c, f"LocalCluster ({n_workers} workers), dashboard {c.dashboard_link}")
        elif isinstance(client, str):
            if "://" not in client:
                raise ValueError(
                    f"client={client!r} is not a scheduler address; use 'tcp://host:port' or "
                    "'tls://host:port', 'local' for a LocalCluster, None, or a distributed.Client"
                )
            c = _connect(client, security)
            owned.append(c)
            target = ComputeTarget(c, f"scheduler {client}")
        elif hasattr(client, "scheduler_info") and hasattr(client, "as_current"):
            target = ComputeTarget(client, f"client {client.scheduler.address}")
        else:
            raise TypeError(
                f"client={client!r} ({type(client).__name__}) is not understood; use None, 'local', "
                "a scheduler address such as 'tcp://10.0.0.1:8786', or a distributed.Client"
            )
        log.info("daskglm: computing on %s", target.description)
        if target.client is None:
            yield target
        else:
            watchdog = PassWatchdog(target.client, timeout, checkpoint)
            token = graph.PASS_COMPUTE.set(watchdog)
            try:
                with target.client.as_current(), dask.config.set(scheduler=target.client):
                    yield target
            finally:
                graph.PASS_COMPUTE.reset(token)
    finally:
        for obj in owned:
            with contextlib.suppress(Exception):
                obj.close()


def persist_decision(persist, nbytes: int, target: ComputeTarget, from_store: bool) -> tuple[bool, str]:
    """Whether to keep the full-grid arrays in cluster memory, and why.

    ``"auto"`` persists when a distributed cluster runs the fit, the panel is read from a
    store (numpy-backed data is in memory already) and its arrays take at most half of the
    workers' total memory limit; otherwise every pass streams the chunks from the store.
    """
    gb = nbytes / 1e9
    if persist is True:
        return True, f"persist=True ({gb:.2f} GB)"
    if persist is False:
        return False, "persist=False: streamed from the store on every pass"
    if persist != "auto":
        raise ValueError(f"persist={persist!r} must be 'auto', True or False")
    if target.client is None:
        return False, "no distributed cluster: chunks are read on every pass"
    if not from_store:
        return False, "the data are already in memory"
    mem = target.worker_memory()
    if mem is None:
        return True, f"{gb:.2f} GB persisted (workers have no memory limit)"
    if nbytes <= 0.5 * mem:
        return True, f"{gb:.2f} GB persisted (<= half of the workers' {mem / 1e9:.2f} GB)"
    return False, f"{gb:.2f} GB streamed from the store (> half of the workers' {mem / 1e9:.2f} GB)"
