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
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import dask

__all__ = ["ComputeTarget", "compute_target", "persist_decision"]

log = logging.getLogger("daskglm")


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
def compute_target(client=None, security=None) -> Iterator[ComputeTarget]:
    """Resolve ``client=`` (see the module docstring) for the duration of a fit."""
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
            with target.client.as_current(), dask.config.set(scheduler=target.client):
                yield target
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
