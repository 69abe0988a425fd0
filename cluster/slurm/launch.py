"""Fit a panel on SLURM (or PBS) workers started by dask-jobqueue.

    python cluster/slurm/launch.py STORE --y y --family poisson --jobs 4 [--pbs] [--dry-run]

Run it on a login node (or inside a small SLURM job): the scheduler runs here, each SLURM job
starts worker processes that connect back to it and read the zarr store from shared storage.
``--dry-run`` prints the job script dask-jobqueue would submit and exits.
Settings come from cluster/slurm/jobqueue.yaml (cores, memory, walltime, queue, account).
"""

from __future__ import annotations

import argparse
import os
import sys

import dask
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def make_cluster(pbs: bool = False):
    """A SLURMCluster (or PBSCluster) configured from jobqueue.yaml next to this file."""
    from dask_jobqueue import PBSCluster, SLURMCluster

    with open(os.path.join(HERE, "jobqueue.yaml")) as f:
        dask.config.update(dask.config.config, yaml.safe_load(f), priority="new")
    return (PBSCluster if pbs else SLURMCluster)(scheduler_options={"dashboard_address": ":0"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--y", required=True)
    ap.add_argument("--x", action="append")
    ap.add_argument("--family", default="poisson")
    ap.add_argument("--exposure", default=None)
    ap.add_argument("--jobs", type=int, default=2, help="SLURM/PBS jobs to start")
    ap.add_argument("--pbs", action="store_true", help="PBS instead of SLURM")
    ap.add_argument("--dry-run", action="store_true", help="print the job script and exit")
    args = ap.parse_args(argv)
    cluster = make_cluster(args.pbs)
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        from distributed import Client

        import daskglm as dg

        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=3600)
            print("dashboard:", client.dashboard_link)
            x = [v for part in args.x for v in part.split(",")] if args.x else None
            res = dg.fit(args.store, args.y, x, args.family, exposure=args.exposure, client=client)
            print(res.summary())
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
