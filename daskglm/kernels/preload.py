"""Load the compiled kernels before a fit needs them, in a background thread (numpy + numba, no dask).

numba compiles lazily: the first call of a compiled function in a process loads its machine
code from numba's disk cache (or compiles it, the first time on a machine), and the very first
call of any compiled function also sets up numba's target context (its typing and lowering
registries, ~0.2-0.3 s). In a fresh process that cost ~0.5 s of the first fit's setup pass at
2e6 cells (``benchmarks/FIRST_FIT.md``), paid on the fit's critical path.

:func:`warm` runs the compiled kernels once on a tiny synthetic panel, synchronously: the setup
sweep, an evaluation with the Hessian and a final pass with the meat (each the same compiled
``_sweep`` of :mod:`daskglm.kernels.chunk_numba`, whose specialisation depends only on the
dtype of the full-grid columns, not on the family), the typed column list
(:mod:`daskglm.kernels.columns_numba`), the log-factorial table and, with ``effects=True``, the
fixed effects' compiled products (:mod:`daskglm.kernels.effects_numba`). Calling the public
kernel functions, not the compiled ones with guessed signatures, loads exactly the
specialisations a fit uses (``tests/test_preload.py`` checks that a fit after :func:`warm` loads
nothing more).

:func:`start` runs :func:`warm` in a daemon thread, at most once per (dtype, effects) in a
process. numba serialises compilation and cache loading behind its global compiler lock (a
re-entrant lock taken in ``Dispatcher.compile``, which checks under it whether the signature
was loaded meanwhile), so a fit that reaches a kernel while the thread is still loading it
waits for that load and then uses it; nothing is loaded twice. ``import daskglm.api.fitting``
(the first ``dg.fit`` or ``from daskglm import fit``) starts the float64 warm-up when numba's
disk cache holds the sweep (:func:`cache_ready`), so it overlaps whatever the script does next
(reading its data); :func:`daskglm.fit` starts what its panel needs (float32 columns, fixed
effects) as soon as it knows, when it computes in this process (on a cluster the workers run
the kernels), and the worker plugin (:mod:`daskglm.runtime.workers`) on each
worker at its setup. ``DASKGLM_PRELOAD=0`` turns it
off. Before the interpreter exits or forks, the thread is waited for (a fork while it holds
numba's lock would leave the child's lock held; an exit while it is inside LLVM could crash
the exit).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .engines import default_engine

__all__ = ["ENV_VAR", "enabled", "cache_ready", "warm", "start", "wait", "column_dtype", "status"]

log = logging.getLogger("daskglm")

#: environment variable: ``0`` / ``false`` / ``no`` / ``off`` turns preloading off
ENV_VAR = "DASKGLM_PRELOAD"

#: the column dtypes the sweep has a specialisation for
DTYPES = ("float64", "float32")

_lock = threading.Lock()
#: (dtype, effects) -> the thread warming it (finished or not)
_threads: dict[tuple[str, bool], threading.Thread] = {}
#: (dtype, effects) -> seconds per step of its warm-up, or the exception it raised
_done: dict[tuple[str, bool], dict | BaseException] = {}
_hooks_installed = False


def enabled() -> bool:
    """Whether preloading is on: ``DASKGLM_PRELOAD`` is not ``0``/``false``/``no``/``off``, and the
    default engine (:func:`daskglm.kernels.engines.default_engine`) is numba."""
    if os.environ.get(ENV_VAR, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        return default_engine() == "numba"
    except ValueError:  # an unknown DASKGLM_ENGINE: dg.fit reports it
        return False


def _tiny_panel(dtype: str):
    """A 3 x 5 Poisson panel with one full-grid covariate of ``dtype``, one on the first axis and
    an intercept: the layout and the arrays as the front end hands them to the kernels."""
    from .families import Poisson
    from .layout import ArgSpec, Block, Layout

    rng = np.random.default_rng(0)
    shape = (3, 5)
    y = rng.poisson(2.0, size=shape).astype(np.float64)
    x_full = rng.normal(size=shape).astype(dtype)
    x_small = rng.normal(size=shape[:1])
    args = (
        ArgSpec("y", "y", (0, 1)),
        ArgSpec("x_full", "x", (0, 1)),
        ArgSpec("x_small", "x", (0,)),
    )
    blocks = (
        Block((), ("Intercept",), (), intercept=True),
        Block((0, 1), ("x_full",), (1,)),
        Block((0,), ("x_small",), (2,)),
    )
    return Layout(("i", "j"), args, blocks, Poisson()), (y, x_full, x_small)


def _run_glm(dtype: str, times: dict) -> None:
    from . import chunk_numba

    layout, arrays = _tiny_panel(dtype)
    params = np.array([0.5, 0.1, -0.1])
    t = time.perf_counter()
    chunk_numba.setup_chunk(layout, *arrays)
    times["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    chunk_numba.eval_chunk(layout, params, True, False, *arrays)
    chunk_numba.eval_chunk(layout, params, True, True, *arrays, meat=True)
    times["eval"] = time.perf_counter() - t


def _run_effects(dtype: str, times: dict) -> None:
    from . import chunk_numba, effects_numba

    layout, arrays = _tiny_panel(dtype)
    t = time.perf_counter()
    effects = [SimpleNamespace(axes=(0,)), SimpleNamespace(axes=(1,))]
    levels = (np.zeros(3), np.zeros(5))
    params = np.array([0.0, 0.1, -0.1])
    for final in (False, True):
        chunk_numba.fe_eval_chunk(layout, effects, params, True, final, levels, *arrays)
    axes = ((0,), (1,))
    W = np.ones((3, 5))
    effects_numba.matvec(axes, W, [np.ones((3, 2)), np.ones((5, 2))])
    index = (slice(0, 3), slice(0, 5))
    base, step, length = effects_numba.global_rows(axes, ((3,), (5,)), index)
    effects_numba.product_rows([(W, base, step, length)], np.ones((2, 8)))
    times["effects"] = time.perf_counter() - t


def warm(dtype: str = "float64", effects: bool = False) -> dict:
    """Run the compiled kernels a fit uses once, on a tiny panel, in this thread.

    Parameters
    ----------
    dtype : {"float64", "float32"}
        The dtype of the fit's full-grid columns (the sweep's one specialisation per dtype).
    effects : bool
        Also the fixed effects' kernels (``dg.fit(..., fe=...)``).

    Returns
    -------
    dict
        Seconds per step: ``setup`` (the first includes numba's target context), ``eval``
        and, with ``effects``, ``effects``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: the compiled sweep has columns of {DTYPES}")
    times: dict[str, float] = {}
    with np.errstate(all="ignore"):
        _run_glm(dtype, times)
        if effects:
            _run_effects(dtype, times)
    return times


def _target(key: tuple[str, bool]) -> None:
    try:
        _done[key] = warm(*key)
        log.debug("daskglm: preloaded the compiled kernels %s: %s", key, _done[key])
    except BaseException as exc:  # the fit runs the same kernels and reports what is wrong
        _done[key] = exc
        log.debug("daskglm: preloading %s failed: %r", key, exc)


def cache_ready() -> bool:
    """Whether numba's disk cache holds a current compiled sweep: an index file of
    ``chunk_numba._sweep``, in the cache directory numba would use (``NUMBA_CACHE_DIR``, else the
    package's ``__pycache__``), written by this numba version for the source as it is now, with at
    least one specialisation. Looked up without importing the kernels. False where the cache is
    cold (a new install, an edited kernel), or numba keeps it elsewhere (a read-only install):
    loading then means compiling for 10-30 s.

    "As it is now" is numba's own source stamp (:func:`_source_stamp`: a hash of the file's
    bytes since numba 0.61, its mtime and size before), the test numba applies when it loads the
    index: a file rewritten with the same bytes (a ``git checkout``, an edit undone) keeps its
    cache, which an mtime comparison would call stale."""
    source = Path(__file__).with_name("chunk_numba.py")
    try:
        from numba.core import caching, config

        stamp = _source_stamp(caching, source)
    except (ImportError, OSError, AttributeError):
        return False
    folder = source.parent / "__pycache__"
    if config.CACHE_DIR:  # numba then caches there only
        folder = Path(config.CACHE_DIR) / caching._CacheLocator.get_suitable_cache_subpath(str(source))
    return any(_index_current(index, stamp) for index in folder.glob("chunk_numba._sweep-*.nbi"))


def _source_stamp(caching, source: Path):
    """numba's freshness stamp of ``source``, as its cache locator computes it."""
    return caching._SourceFileBackedLocatorMixin.get_source_stamp(SimpleNamespace(_py_file=str(source)))


def _index_current(index: Path, stamp) -> bool:
    """Whether the numba cache index ``index`` was written by this numba for a source whose stamp
    is ``stamp`` and lists a compiled specialisation (how ``IndexDataCacheFile`` reads it: a
    pickled version string, then the pickled ``(stamp, overloads)``)."""
    import pickle

    import numba

    try:
        with open(index, "rb") as f:
            version = pickle.load(f)
            if version != numba.__version__:
                return False
            saved, overloads = pickle.loads(f.read())
    except Exception:  # unreadable, truncated, another format: numba would not use it either
        return False
    return saved == stamp and bool(overloads)


def start(
    dtype: str = "float64", effects: bool = False, *, cached_only: bool = False
) -> threading.Thread | None:
    """Start :func:`warm` in a daemon thread unless it ran or runs already for ``(dtype,
    effects)`` in this process, or preloading is off (:func:`enabled`). Returns the thread
    (None when off). Never raises for the data's sake: a failing warm-up is logged at debug
    level, and the fit meets the same error in its own pass.

    ``cached_only`` starts it only when :func:`cache_ready`: where the kernels would be compiled
    (10-30 s), a process that imports ``fit`` and exits early would wait for that at its exit;
    a fit (which needs the kernels anyway) starts it without this condition."""
    if not enabled() or dtype not in DTYPES or (cached_only and not cache_ready()):
        return None
    key = (dtype, bool(effects))
    global _hooks_installed
    with _lock:
        thread = _threads.get(key)
        if thread is not None:
            return thread
        if not _hooks_installed:
            atexit.register(wait, 60.0)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(before=_before_fork)
            _hooks_installed = True
        thread = threading.Thread(target=_target, args=(key,), name=f"daskglm-preload-{dtype}", daemon=True)
        _threads[key] = thread
        thread.start()
    return thread


def _before_fork() -> None:
    if threading.current_thread().name.startswith("daskglm-preload"):
        return
    wait(60.0)


def wait(timeout: float | None = None) -> bool:
    """Wait for every preloading thread started so far; True when all have finished."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _lock:
        threads = list(_threads.values())
    for t in threads:
        if t is threading.current_thread():
            continue
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


def status() -> dict:
    """``(dtype, effects)`` -> seconds per step of each finished warm-up (or its exception);
    ``"running"`` for one still running."""
    with _lock:
        keys = list(_threads)
    return {k: _done.get(k, "running") for k in keys}


def column_dtype(layout, dtypes) -> str:
    """The dtype of the sweep's column list for a panel: ``"float32"`` when every full-grid
    covariate is float32 (the sweep then reads them as they are), else ``"float64"``.
    ``dtypes`` are the dtypes of ``layout.args``' arrays, in order."""
    full = [
        np.dtype(dt)
        for spec, dt in zip(layout.args, dtypes, strict=True)
        if spec.role == "x" and len(spec.axes) == layout.ndim
    ]
    return "float32" if full and all(dt == np.float32 for dt in full) else "float64"
