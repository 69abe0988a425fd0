"""Command line: ``daskglm demo`` simulates a 3-D panel and fits it on a local dask cluster."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import warnings

    from distributed import Client, LocalCluster

    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

    import daskglm as dg
    from daskglm.simulate import simulate_panel

    sizes = {"i": args.i, "j": args.j, "k": args.k}
    with tempfile.TemporaryDirectory(prefix="daskglm-demo-") as tmp:
        path = f"{tmp}/panel.zarr"
        ds = simulate_panel(sizes, "poisson", exposure=True, seed=args.seed, chunks={"i": 50, "j": 50})
        t0 = time.perf_counter()
        ds.to_zarr(path, mode="w")
        print(
            f"simulated a {args.i} x {args.j} x {args.k} Poisson panel into {path} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
        with (
            LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            print(f"local dask cluster: {len(cluster.workers)} workers, dashboard {client.dashboard_link}")
            x = [v for v in ds.data_vars if v.startswith("x_")]
            t0 = time.perf_counter()
            res = dg.fit(path, "y", x, "poisson", exposure="exposure")
            print(
                f"fitted {len(res.params)} coefficients in {time.perf_counter() - t0:.1f}s "
                f"({res.n_iter} Newton iterations, {res.passes} passes over the data)\n"
            )
            print(res.summary())
            truth = json.loads(ds.attrs["true_params"])
            worst = max(abs(res.params[k] - v) / res.bse[k] for k, v in truth.items())
            print(f"\nlargest |estimate - true value| / std err over the coefficients: {worst:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="daskglm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate a 3-D Poisson panel and fit it on a LocalCluster")
    demo.add_argument("--i", type=int, default=100, help="length of dim i (default 100)")
    demo.add_argument("--j", type=int, default=100, help="length of dim j (default 100)")
    demo.add_argument("--k", type=int, default=20, help="length of dim k (default 20)")
    demo.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    demo.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
        for name in ("i", "j", "k", "workers"):
            if getattr(args, name, 1) < 1:
                parser.error(f"--{name} must be >= 1")
        return {"demo": _demo}[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
        print(f"daskglm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
