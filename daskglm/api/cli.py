"""Command line: ``daskglm demo | simulate | info | fit | ingest``.

``demo`` simulates a 3-D panel and fits it on a local dask cluster; ``simulate`` writes a panel
to zarr chunk by chunk; ``info`` describes a store; ``fit`` fits one and writes the results;
``ingest`` streams a long table (parquet/CSV) into a zarr panel (:func:`daskglm.from_long`).

``fit`` takes its family names, family options (``--trials``, ``--alpha``, ``--event``) and solver
options (``--max-halvings``, ``--learning-rate``, ...) from :mod:`daskglm.api.registry`, so it accepts
exactly what ``dg.fit`` accepts; an option the chosen family or solver does not take is refused.
Exit codes: 0 done, 2 bad input, 3 the cluster was lost (resume with ``--checkpoint``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import warnings

    from distributed import Client, LocalCluster

    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

    import daskglm as dg
    from daskglm.api.simulate import simulate_panel

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


def _parse_sizes(text: str, what: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{what}: {part!r} is not NAME=POSITIVE_INTEGER (e.g. i=200,j=200,k=50)")
        out[name.strip()] = int(value)
    if not out:
        raise ValueError(f"{what} is empty; give e.g. i=200,j=200,k=50")
    return out


def _parse_block(text: str, dims: dict[str, int]) -> tuple[str, tuple[tuple[str, ...], int]]:
    name, sep, rest = text.partition("=")
    bdims, _, n = rest.partition(":")
    names = tuple(d for d in bdims.split(",") if d)
    if not sep or not name or not names or (n and not n.isdigit()):
        raise ValueError(f"--block {text!r} is not NAME=DIM[,DIM...][:N] (e.g. x_ij=i,j:2)")
    unknown = [d for d in names if d not in dims]
    if unknown:
        raise ValueError(f"--block {text!r}: {unknown[0]!r} is not one of the --dims {list(dims)}")
    return name, (names, int(n) if n else 1)


def _simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from daskglm.api.registry import family_class
    from daskglm.api.simulate import simulate_panel
    from daskglm.frontend.tables import write_zarr, zarr_compressors

    args.family = family_class(args.family).name
    zarr_compressors(args.codec, "--codec")  # a bad codec is refused before anything is simulated
    sizes = _parse_sizes(args.dims, "--dims")
    chunks = _parse_sizes(args.chunks, "--chunks") if args.chunks else None
    if chunks and (bad := [d for d in chunks if d not in sizes]):
        raise ValueError(f"--chunks names {bad[0]!r}, which is not one of the --dims {list(sizes)}")
    blocks = dict(_parse_block(b, sizes) for b in args.block) if args.block else None
    ds = simulate_panel(
        sizes,
        args.family,
        blocks=blocks,
        chunks=chunks,
        seed=args.seed,
        alpha=args.alpha,
        missing_fraction=args.missing,
        exposure=args.exposure,
        dtype=np.dtype(args.dtype),
    )
    t0 = time.perf_counter()
    with _scheduler(args.scheduler):
        write_zarr(ds, args.out, codec=args.codec, overwrite=args.overwrite)
    cells = int(np.prod(list(sizes.values())))
    print(
        f"wrote {args.out}: {args.family} panel {' x '.join(f'{d}={n}' for d, n in sizes.items())} "
        f"({cells:.3g} cells, {ds.nbytes / 1e9:.2f} GB uncompressed) in {time.perf_counter() - t0:.1f}s"
    )
    print("true parameters (also in the store's attrs['true_params']):")
    for k, v in json.loads(ds.attrs["true_params"]).items():
        print(f"  {k:20s} {v: .6f}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from daskglm.frontend.tables import from_long, zarr_compressors

    zarr_compressors(args.codec, "--codec")  # a bad codec is refused before the table is read
    dims = [d for d in args.dims.split(",") if d]
    if args.chunks is None or args.chunks.isdigit():
        chunks = int(args.chunks) if args.chunks else None
    else:
        chunks = _parse_sizes(args.chunks, "--chunks")
    t0 = time.perf_counter()
    ds = from_long(
        args.table,
        dims,
        to=args.out,
        chunks=chunks,
        values=[v for v in args.values.split(",") if v] if args.values else None,
        y=args.y,
        dtype=args.dtype,
        overwrite=args.overwrite,
        codec=args.codec,
        progress=not args.no_progress and None,
    )
    print(ds.attrs["from_long"])
    took = time.perf_counter() - t0
    print(f"wrote {args.out} in {took:.1f}s; fit it with: daskglm fit {args.out} --formula 'y ~ x + ...'")
    return 0


def _info(args: argparse.Namespace) -> int:
    import xarray as xr

    ds = xr.open_zarr(args.store)
    if not ds.data_vars:
        raise ValueError(f"{args.store} holds no variables")
    # the response: --y, else a variable named y; otherwise none is labelled (a guess such as the
    # widest variable only sets the panel dims: it may be a covariate)
    y = args.y if args.y else ("y" if "y" in ds else None)
    if y is not None and y not in ds:
        raise KeyError(f"--y {y!r} is not a variable of {args.store} (it has {sorted(ds.data_vars)})")
    widest = y or max(ds.data_vars, key=lambda v: ds[v].ndim)
    dims = ds[widest].dims
    print(f"store: {args.store}")
    print(f"panel dims (those of {widest!r}): " + ", ".join(f"{d}={ds.sizes[d]}" for d in dims))
    if y is None:
        print("response: not known (no variable 'y'); give it with --y NAME (daskglm fit --y NAME)")
    chunks = ds[widest].chunks
    if chunks:
        print(
            f"chunks of {'y' if y else repr(widest)}: "
            + ", ".join(f"{d}={c[0]}" for d, c in zip(dims, chunks, strict=True))
        )
    print(f"{'variable':24s} {'dims':22s} {'dtype':8s} {'chunks':18s} block")
    for name in sorted(ds.data_vars, key=lambda v: (-len(ds[v].dims), v)):
        v = ds[name]
        panel = tuple(d for d in v.dims if d in dims)
        extra = [d for d in v.dims if d not in dims]
        block = (
            "response" if name == y else "(" + ", ".join(panel) + ")" + (f" x {extra[0]}" if extra else "")
        )
        ck = "x".join(str(c[0]) for c in v.chunks) if v.chunks else "-"
        print(f"{name:24s} {str(v.dims):22s} {str(v.dtype):8s} {ck:18s} {block}")
    if "true_params" in ds.attrs:
        print("true parameters: " + ds.attrs["true_params"])
    return 0


def _flag(name: str) -> str:
    """The command-line spelling of an option: ``max_halvings`` -> ``--max-halvings``."""
    return "--" + name.replace("_", "-")


def _family_options() -> dict[str, tuple]:
    """Every family option of the registry: name -> (its declaration, the families taking it)."""
    from daskglm.api.registry import FAMILIES

    out: dict[str, tuple] = {}
    for cls in FAMILIES.values():
        for opt in cls.options:
            if opt.name in out and out[opt.name][0].parse is not opt.parse:
                raise RuntimeError(f"families declare option {opt.name!r} with different types")
            out.setdefault(opt.name, (opt, []))[1].append(cls.name)
    return out


def _solver_options() -> dict[str, tuple]:
    """Every solver option of the registry: name -> (its parser, [(solver, ConfigOption), ...])."""
    from daskglm.api.registry import SOLVERS

    out: dict[str, tuple] = {}
    for spec in SOLVERS.values():
        for name, opt in spec.options().items():
            if name in out and out[name][0] is not opt.parse:
                raise RuntimeError(f"solvers declare option {name!r} with different types")
            out.setdefault(name, (opt.parse, []))[1].append((spec.name, opt))
    return out


def _add_registry_options(fit: argparse.ArgumentParser) -> None:
    """``--family``, ``--solver`` and their options, from :mod:`daskglm.api.registry`."""
    from daskglm.api.registry import FAMILIES, FAMILY_ALIASES, SOLVERS

    aliases = ", ".join(f"{a}={c}" for a, c in FAMILY_ALIASES.items())
    fit.add_argument("--family", default="gaussian", help=f"{'|'.join(FAMILIES)} (aliases {aliases})")
    fit.add_argument("--solver", default="newton", help="|".join(SOLVERS))
    group = fit.add_argument_group("family options (refused by the families that do not take them)")
    for name, (opt, owners) in _family_options().items():
        group.add_argument(
            _flag(name),
            dest=f"family_{name}",
            type=opt.parse,
            default=None,
            metavar=opt.metavar,
            help=f"{', '.join(owners)}: {opt.help}".replace("%", "%%"),
        )
    group = fit.add_argument_group("solver options (refused by the solvers that do not take them)")
    for name, (parse, entries) in _solver_options().items():
        by_text: dict[str, list[str]] = {}  # solvers documenting the option alike share one entry
        for solver, opt in entries:
            text = opt.help + ("" if opt.default is None else f" (default {opt.default})")
            by_text.setdefault(text, []).append(solver)
        text = "; ".join(f"{', '.join(solvers)}: {t}" for t, solvers in by_text.items())
        group.add_argument(
            _flag(name),
            dest=f"solver_{name}",
            type=parse,
            default=None,
            metavar=getattr(parse, "__name__", "VALUE").upper().lstrip("_"),
            help=text.replace("%", "%%"),
        )


def _given(args: argparse.Namespace, prefix: str, names) -> dict:
    """The options ``names`` that were given on the command line (stored as ``prefix + name``)."""
    return {n: v for n in names if (v := getattr(args, prefix + n)) is not None}


#: ``--table`` formats by suffix (:func:`daskglm.etable`'s ``type``)
TABLE_KINDS = {".md": "md", ".tex": "tex", ".html": "html", ".htm": "html", ".txt": "text"}


def _suffix(path: str) -> str:
    """The lower-case suffix of a file name (``""`` without one)."""
    return os.path.splitext(path)[1].lower()


def _check_output_path(path: str, flag: str, suffixes=None) -> None:
    """Refuse an output path before any work: a missing parent folder, a folder in the place of
    the file, or (with ``suffixes``) a suffix that picks no format."""
    if suffixes is not None and _suffix(path) not in suffixes:
        raise ValueError(
            f"{flag} {path!r}: the suffix picks the format; use one of {', '.join(sorted(suffixes))}"
        )
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder; give a file name inside it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path!r}: the folder {parent!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path!r}: the folder {parent!r} is not writable")


def _plot_suffixes() -> set[str]:
    """The figure formats matplotlib writes (``--plot``); refused with a clear error without it."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as err:
        raise ImportError(
            "--plot needs matplotlib: pip install 'daskglm[plot]' (or matplotlib), or drop --plot"
        ) from err
    return {"." + ext for ext in FigureCanvasBase.get_supported_filetypes()}


def _check_fit_outputs(args: argparse.Namespace) -> None:
    """``--out``, ``--table``, ``--plot`` and ``--checkpoint`` checked before the fit runs (a
    bad one used to fail only after the whole fit)."""
    if args.out:
        _check_output_path(args.out, "--out")
    if args.table:
        _check_output_path(args.table, "--table", TABLE_KINDS)
    if args.plot:
        _check_output_path(args.plot, "--plot", _plot_suffixes())
    if args.checkpoint:
        _check_output_path(args.checkpoint, "--checkpoint")
    given = [p for p in (args.out, args.table, args.plot, args.checkpoint) if p]
    if len({os.path.abspath(p) for p in given}) < len(given):
        raise ValueError("--out, --table, --plot and --checkpoint must name different files")


def _fit(args: argparse.Namespace) -> int:
    import dask
    import xarray as xr

    from daskglm.api.registry import check_options, resolve_family, resolve_solver

    _check_fit_outputs(args)
    family = resolve_family(args.family, _given(args, "family_", _family_options()), spell=_flag)
    spec = resolve_solver(args.solver)
    solver_options = _given(args, "solver_", _solver_options())
    check_options(solver_options, spec.options(), f"solver {spec.name!r}", _flag)
    family_options = {o.name: getattr(family, o.name) for o in family.options}
    if args.formula:
        if args.x or args.y:
            raise ValueError("--formula names the response and covariates: drop --y/--x")
        x = None
    elif not args.y:
        raise ValueError("give the response with --y (and --x), or a --formula 'y ~ x1 + log(x2) | fe'")
    elif args.x:
        x = [v for part in args.x for v in part.split(",") if v]
    else:
        ds = xr.open_zarr(args.store)
        roles = {args.y, args.exposure, args.offset, args.weights}
        roles |= {v for v in family_options.values() if isinstance(v, str)}
        x = [v for v in ds.data_vars if v not in roles]
    timeout = (
        {} if args.no_workers_timeout is None else {"daskglm.no-workers-timeout": args.no_workers_timeout}
    )
    with dask.config.set(timeout):
        res = _run_fit(args, x, family, solver_options)
    _report(res, args.out, family_options)
    _outputs(res, args.table, args.plot)
    return 0


def _outputs(res, table: str | None, plot: str | None) -> None:
    """``--table`` (etable; format from the suffix) and ``--plot`` (coefficient plot)."""
    import daskglm as dg

    if table:  # checked before the fit (_check_fit_outputs)
        dg.etable([res], type=TABLE_KINDS[_suffix(table)], file=table)
        print(f"wrote {table}")
    if plot:
        dg.coefplot([res], path=plot)
        print(f"wrote {plot}")


def _run_fit(args: argparse.Namespace, x: list, family, solver_options: dict):
    import daskglm as dg

    return dg.fit(
        args.store,
        args.formula or args.y,
        x,
        family,
        exposure=args.exposure,
        offset=args.offset,
        weights=args.weights,
        intercept=not args.no_intercept,
        solver=args.solver,
        cov_type=args.cov_type,
        cluster=_cluster_arg(args.cluster),
        fe=[e.strip() for e in re.split(r"[,+]", args.fe) if e.strip()] if args.fe else None,
        ssc=not args.no_ssc,
        drop_singletons=not args.keep_singletons,
        tol=args.tol,
        max_iter=args.max_iter,
        client=args.scheduler,
        progress=not args.no_progress and None,
        checkpoint=args.checkpoint,
        engine=args.engine,
        **solver_options,
    )


def _cluster_arg(text: str | None):
    """``--cluster``: ``i,j`` (one-way on (i, j) cells), or fixest's ``i^j`` / ``i + j``."""
    if not text:
        return None
    if "+" in text or "^" in text:
        return text
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _report(res, out_path: str | None, family_options: dict) -> None:
    """Print the summary and write the JSON results file."""
    passes = res.passes  # the fit's own (the summary's null model adds passes to the counter)
    print(res.summary())
    print(f"computed on {res.compute_target}; {res.persist_reason}; {passes} passes over the data")
    if out_path:
        cov = res.cov_params()
        out = {
            "params": res.params.to_dict(),
            "bse": res.bse.to_dict(),
            "cov_params": {"names": list(cov.index), "matrix": cov.to_numpy().tolist()},
            "alpha": getattr(res, "alpha", None),
            "alpha_bse": getattr(res, "alpha_bse", None),
            "diagnostics": {
                "family": res.family.name,
                "family_options": family_options,
                "solver": res.solver,
                "converged": res.converged,
                "n_iter": res.n_iter,
                "message": res.message,
                "llf": res.llf,
                "deviance": res.deviance,
                "aic": res.aic,
                "bic": res.bic,
                "nobs": res.nobs,
                "df_resid": res.df_resid,
                "scale": res.scale,
                "passes": passes,
                "cov_type": res.cov_type,
                "fixed_effects": getattr(res, "n_levels", None),
                "n_dropped": res.n_dropped,
                "absorbed": getattr(res, "absorbed", None),
                "history": res.history.reset_index().to_dict(orient="records"),
            },
        }
        with open(out_path, "w") as f:
            json.dump(out, f, indent=1, default=float)
        print(f"wrote {out_path}")


@contextlib.contextmanager
def _scheduler(address):
    if not address:
        yield
        return
    from daskglm.runtime.scheduling import compute_target

    with compute_target(address):
        yield


def main(argv: list[str] | None = None) -> int:
    from daskglm.api.registry import FAMILIES
    from daskglm.frontend.tables import DEFAULT_CODEC
    from daskglm.runtime.scheduling import ClusterLostError

    codec_help = (
        "compression of the store: lz4 (blosc-lz4: fast to decode, counts and dummies ~2.4x smaller), "
        "zstd[:LEVEL] (~25%% smaller again, 2-3x the decoding time) or none (fastest from the page "
        f"cache, largest); default {DEFAULT_CODEC}, see benchmarks/CODECS.md"
    )

    parser = argparse.ArgumentParser(
        prog="daskglm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate a 3-D Poisson panel and fit it on a LocalCluster")
    demo.add_argument("--i", type=int, default=100, help="length of dim i (default 100)")
    demo.add_argument("--j", type=int, default=100, help="length of dim j (default 100)")
    demo.add_argument("--k", type=int, default=20, help="length of dim k (default 20)")
    demo.add_argument("--workers", type=int, default=2, help="local workers (default 2)")
    demo.add_argument("--seed", type=int, default=0)

    sim = sub.add_parser("simulate", help="write a simulated panel to a zarr store, chunk by chunk")
    sim.add_argument("out", help="the zarr store to write (e.g. panel.zarr)")
    sim.add_argument("--dims", required=True, help="dims and lengths, e.g. i=200,j=200,k=50")
    sim.add_argument("--family", default="poisson", help="|".join(FAMILIES) + " (or an alias of one)")
    sim.add_argument(
        "--block",
        action="append",
        help="covariate block NAME=DIM[,DIM...][:N], repeatable (default: every dim subset, 4 each)",
    )
    sim.add_argument("--chunks", default=None, help="chunk lengths, e.g. i=50,j=50 (default ~1M cells)")
    sim.add_argument("--exposure", action="store_true", help="add an exposure over the first two dims")
    sim.add_argument("--alpha", type=float, default=0.5, help="NB2 dispersion (default 0.5)")
    sim.add_argument("--missing", type=float, default=0.0, help="share of cells with y missing")
    sim.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--overwrite", action="store_true", help="replace an existing store")
    sim.add_argument("--codec", default=DEFAULT_CODEC, help=codec_help)
    sim.add_argument("--scheduler", default=None, help="write on this dask scheduler ('local' or an address)")

    ing = sub.add_parser("ingest", help="stream a long table (parquet/CSV) into a chunked zarr panel")
    ing.add_argument("table", help="parquet or CSV file, folder of them, glob or URL")
    ing.add_argument("--dims", required=True, help="key columns naming a cell, e.g. exporter,importer,year")
    ing.add_argument("--out", required=True, help="the zarr store to write (e.g. panel.zarr)")
    ing.add_argument("--chunks", default=None, help="chunk lengths (e.g. exporter=50) or cells per chunk")
    ing.add_argument("--values", default=None, help="value columns to keep, comma-separated (default: all)")
    ing.add_argument("--y", default=None, help="the response: placed on the full grid")
    ing.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ing.add_argument("--overwrite", action="store_true", help="replace an existing store")
    ing.add_argument("--codec", default=DEFAULT_CODEC, help=codec_help)
    ing.add_argument("--no-progress", action="store_true")

    info = sub.add_parser("info", help="dims, sizes, chunks and variables of a store, with their blocks")
    info.add_argument("store")
    info.add_argument("--y", default=None, help="the response (default 'y', else the widest variable)")

    fit = sub.add_parser("fit", help="fit a GLM to a zarr store and print the summary")
    fit.add_argument("store")
    fit.add_argument("--y", default=None, help="the response variable (or give --formula)")
    fit.add_argument(
        "--formula",
        default=None,
        help="fixest formula instead of --y/--x, e.g. 'flow ~ tariff + log(dist) | exporter^year'",
    )
    fit.add_argument(
        "--x", action="append", help="covariates, comma-separated or repeated (default: all others)"
    )
    fit.add_argument("--exposure", default=None)
    fit.add_argument("--offset", default=None)
    fit.add_argument("--weights", default=None)
    fit.add_argument("--no-intercept", action="store_true")
    fit.add_argument("--cov-type", default="nonrobust", help="nonrobust|robust|HC0|HC1|cluster")
    fit.add_argument(
        "--cluster",
        default=None,
        help="cluster dims (with --cov-type cluster): i,j or i^j one-way on (i, j) cells; i+j two-way",
    )
    fit.add_argument(
        "--fe",
        default=None,
        help="fixed effects separated by , or + (as fe= and fixest), ^ interacts dims: e.g. "
        "exporter^year,importer^year or 'exporter^year + importer^year'",
    )
    fit.add_argument("--no-ssc", action="store_true", help="with --fe: no small-sample corrections")
    fit.add_argument("--keep-singletons", action="store_true", help="with --fe: keep singleton levels")
    fit.add_argument("--tol", type=float, default=None)
    fit.add_argument("--max-iter", type=int, default=None)
    fit.add_argument("--scheduler", default=None, help="'local' or a scheduler address (tcp://, tls://)")
    fit.add_argument("--checkpoint", default=None, help="checkpoint file (resumed if it exists)")
    fit.add_argument(
        "--no-workers-timeout",
        default=None,
        metavar="DURATION",
        help="give up when the cluster has had no workers this long, e.g. 30s, 10m (default: dask "
        "config daskglm.no-workers-timeout, 60s); exit code 3",
    )
    fit.add_argument(
        "--engine",
        default=None,
        choices=["numba", "numpy"],
        help="per-chunk kernel: compiled (numba, the default when it imports) or the numpy reference; "
        "default: the DASKGLM_ENGINE environment variable, else numba",
    )
    fit.add_argument("--no-progress", action="store_true")
    fit.add_argument("--out", default=None, help="write params, SEs, covariance, diagnostics as JSON")
    fit.add_argument("--table", default=None, help="write the regression table (.md, .tex, .html, .txt)")
    fit.add_argument(
        "--plot", default=None, help="write a coefficient plot (.png, .pdf, .svg; needs matplotlib)"
    )
    _add_registry_options(fit)
    import warnings

    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification", category=UserWarning)
    try:
        args = parser.parse_args(argv)
        for name in ("i", "j", "k", "workers"):
            if getattr(args, name, 1) < 1:
                parser.error(f"--{name} must be >= 1")
        commands = {"demo": _demo, "simulate": _simulate, "info": _info, "fit": _fit, "ingest": _ingest}
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ClusterLostError as err:
        print(f"daskglm: error: {err}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, KeyError, OSError, ConnectionError, ImportError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"daskglm: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
