"""Per-cell family maths: ns/cell of the numpy reference against the compiled kernels.

For every family (NB2 with a fixed and an estimated alpha, the binomial with trials, the
exponential with censoring) on one slab of the compiled sweep's length (``SLAB_CELLS``, 16384
cells: NB2's lookup tables are made once per slab, so their cost per cell is the sweep's),
single-threaded:

* ``numpy``: ``Family.derivatives`` and ``Family.unit_deviance`` (the reference);
* ``numba``: the compiled ``stats`` / ``deviance`` of ``family.cell_kernel()`` (the vectorisable
  ``families_numba.exp``);
* ``math.exp``: the same compiled functions rebuilt with ``math.exp`` (a scalar libm call) in place
  of ``families_numba.exp``, to show what the vectorisable exponential buys;
* and the exponential alone: ``families_numba.exp`` in a compiled loop, ``math.exp`` in a compiled
  loop, numpy's ``np.exp`` ufunc;
* ``stats + deviance``: what the sweep calls where it needs the unit deviance (every evaluation
  of NB2 with alpha estimated, every final pass): the two calls one after the other against
  ``families_numba.cell_stats_deviance`` (NB2's in one loop over the cells).

Times are the best of several repeats of the thread's CPU time (``time.thread_time``), which is
steadier than wall time on a shared machine. Run: ``python benchmarks/family_cells.py``.
"""

from __future__ import annotations

import math
import time
import types

import numba
import numpy as np

from daskglm.kernels import families_numba as fn
from daskglm.kernels.chunk_numba import SLAB_CELLS
from daskglm.kernels.families import Binomial, Exponential, Gaussian, NegativeBinomial, Poisson

N = SLAB_CELLS


def ns_per_cell(call, reps: int = 40, rounds: int = 7) -> float:
    call()
    best = np.inf
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(reps):
            call()
        best = min(best, (time.thread_time() - t0) / reps)
    return best / N * 1e9


@numba.njit(inline="always")
def _math_exp(x):
    return math.exp(x)


def with_math_exp(dispatcher, memo: dict | None = None):
    """``dispatcher`` recompiled (uncached) with ``math.exp`` for ``exp``, recursively through
    the module's own compiled helpers it calls."""
    memo = {} if memo is None else memo
    if dispatcher in memo:
        return memo[dispatcher]
    py = dispatcher.py_func
    env = dict(py.__globals__)
    for name in py.__code__.co_names:
        obj = env.get(name)
        if name == "exp":
            env[name] = _math_exp
        elif isinstance(obj, numba.core.registry.CPUDispatcher) and obj.py_func.__module__ == fn.__name__:
            env[name] = with_math_exp(obj, memo)
    rebuilt = types.FunctionType(py.__code__, env, py.__name__, py.__defaults__, py.__closure__)
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    memo[dispatcher] = numba.njit(**options)(rebuilt)
    return memo[dispatcher]


def cases(rng):
    eta = rng.uniform(-4.0, 4.0, N)
    ones, zeros = np.ones(N), np.zeros(N)
    mu = np.exp(eta)
    counts = rng.poisson(mu).astype(np.float64)
    m = rng.integers(1, 101, N).astype(np.float64)
    yield "gaussian", Gaussian(), eta + rng.normal(0, 1, N), eta, ones, zeros, np.zeros(0)
    yield "poisson", Poisson(), counts, eta, ones, zeros, np.zeros(0)
    yield "poisson (PPML, y real)", Poisson(), mu * rng.lognormal(0, 1, N), eta, ones, zeros, np.zeros(0)
    event = (rng.random(N) < 0.7).astype(np.float64)
    yield (
        "exponential (censored)",
        Exponential("d"),
        rng.exponential(1, N) / mu,
        eta,
        ones,
        event,
        np.zeros(0),
    )
    y_b = rng.binomial(m.astype(np.int64), 1 / (1 + np.exp(-eta))).astype(np.float64)
    yield "binomial (trials 1-100)", Binomial("m"), y_b, eta, m, zeros, np.zeros(0)
    r = 2.0
    y_nb = rng.negative_binomial(r, r / (r + mu)).astype(np.float64)
    yield "NB2 fixed alpha", NegativeBinomial(alpha=0.5), y_nb, eta, ones, zeros, np.zeros(0)
    yield "NB2 estimated alpha", NegativeBinomial(), y_nb, eta, ones, zeros, np.array([np.log(0.5)])
    y_big = y_nb * 3000.0  # counts up to ~1e5-1e6: more distinct values than cells, no table
    yield "NB2 estimated, large counts", NegativeBinomial(), y_big, eta + 8.0, ones, zeros, np.array([0.0])


def row(label, family, y, eta, m, d, extra, out1) -> str:
    """One line of the table: ns/cell of numpy, the kernel and the kernel with math.exp."""
    kernel = family.cell_kernel()
    theta = kernel.theta(extra)
    aux = {"trials": m, "event": d}
    out = np.empty((kernel.n_rows, N))
    slow_stats, slow_dev = with_math_exp(kernel.stats), with_math_exp(kernel.deviance)
    with np.errstate(all="ignore"):
        t_np = ns_per_cell(lambda: family.derivatives(y, eta, aux, extra), reps=10)
        t_npd = ns_per_cell(lambda: family.unit_deviance(y, eta, aux, extra), reps=10)
    t_nb = ns_per_cell(lambda: kernel.stats(y, eta, m, d, theta, out))
    t_me = ns_per_cell(lambda: slow_stats(y, eta, m, d, theta, out))
    t_nbd = ns_per_cell(lambda: kernel.deviance(y, eta, m, d, theta, out1))
    t_med = ns_per_cell(lambda: slow_dev(y, eta, m, d, theta, out1))
    return (
        f"{label:28s} {t_np:8.2f} {t_nb:8.2f} {t_me:9.2f} {t_np / t_nb:8.1f}x | "
        f"{t_npd:8.2f} {t_nbd:8.2f} {t_med:8.2f}"
    )


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-30.0, 30.0, N)
    out1 = np.empty(N)

    @numba.njit
    def math_exp_loop(x, out):
        for i in range(x.shape[0]):
            out[i] = math.exp(x[i])

    print(f"exp alone, n = {N}, ns/cell (thread CPU time):")
    print(f"  families_numba.exp {ns_per_cell(lambda: fn.exp_array(x, out1)):6.2f}")
    print(f"  math.exp           {ns_per_cell(lambda: math_exp_loop(x, out1)):6.2f}")
    print(f"  np.exp (ufunc)     {ns_per_cell(lambda: np.exp(x, out=out1)):6.2f}")
    print()
    head = ("family", "numpy", "numba", "math.exp", "speed-up", "numpy", "numba", "math.exp")
    print(f"{'':28s} {'stats (f, g, h[, theta rows])':^36s} | {'unit deviance':^26s}")
    print("{:28s} {:>8s} {:>8s} {:>9s} {:>9s} | {:>8s} {:>8s} {:>8s}".format(*head))
    all_cases = list(cases(rng))
    for case in all_cases:
        print(row(*case, out1))
    print()
    print(f"{'':28s} {'stats + deviance':^26s}")
    print("{:28s} {:>8s} {:>8s} {:>8s}".format("family", "2 calls", "fused", "saved"))
    for case in all_cases:
        print(fused_row(*case, out1))


def fused_row(label, family, y, eta, m, d, extra, out1) -> str:
    """ns/cell of ``cell_stats`` then ``cell_deviance`` against ``cell_stats_deviance``."""
    kernel = family.cell_kernel()
    theta, code = kernel.theta(extra), kernel.code
    out = np.empty((kernel.n_rows + 2, N))  # the sweep's scratch has two more rows

    def both():
        fn.cell_stats(code, y, eta, m, d, theta, out)
        fn.cell_deviance(code, y, eta, m, d, theta, out1)

    t_two = ns_per_cell(both)
    t_one = ns_per_cell(lambda: fn.cell_stats_deviance(code, y, eta, m, d, theta, out, out1))
    return f"{label:28s} {t_two:8.2f} {t_one:8.2f} {t_two - t_one:8.2f}"


if __name__ == "__main__":
    main()
