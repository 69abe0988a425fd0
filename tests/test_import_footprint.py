"""What ``import daskglm`` and a dask worker running daskglm's kernels load.

Each process's own memory is what limits how small a worker's memory limit can be (a worker at
0.75 GB pauses at 0.6 GB), and what the client's peak is measured against (pyfixest, glum): see
``benchmarks/GRAVITY.md``, "1e8 cells out of core". These tests pin *which* heavy modules stay
unloaded (not an RSS threshold, which would depend on the machine), each in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: loaded by nothing that ``dg.fit`` needs: each is imported where it is used
NEVER_FOR_A_FIT = [
    "scipy.stats",  # p-values through scipy.special (ndtr, ndtri, chdtrc)
    "scipy.optimize",  # only the lbfgs solver
    "formulaic",  # only formulas
    "matplotlib",  # only plots
    "statsmodels",
    "tqdm",  # only the ingest's progress bar
    "distributed",  # only with client=
    "fsspec",
    "zarr",  # only when the data is a store
    "numcodecs",
    "pyfixest",
    "glum",
]

#: besides those, what a worker running the kernels must not load (the package's public API,
#: the named-dim front end and what it imports)
NOT_ON_A_WORKER = ["daskglm.api", "daskglm.frontend", "daskglm.solvers.newton", "xarray", "pandas", "pyarrow"]


def _loaded(code: str, names: list[str]) -> list[str]:
    """The names in ``names`` present in ``sys.modules`` after running ``code`` in a fresh process."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([n for n in {names!r} if n in sys.modules]))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_daskglm_loads_nothing_heavy():
    """``import daskglm`` alone loads the package's ``__init__`` only: public names on first use."""
    heavy = NEVER_FOR_A_FIT + ["numpy", "scipy", "numba", "dask", "xarray", "pandas", "daskglm.api"]
    assert _loaded("import daskglm", heavy) == []


def test_fit_loads_no_optional_module():
    """``from daskglm import fit`` (the whole fitting path) loads none of the optional modules."""
    loaded = _loaded("from daskglm import fit, GLMResults, FAMILIES", NEVER_FOR_A_FIT + ["numpy", "xarray"])
    assert loaded == ["numpy", "xarray"]  # the probe sees the fit's own modules


@pytest.mark.parametrize("fe", [False, True])
def test_a_threaded_fit_loads_no_optional_module(fe):
    """A fit on dask's threaded scheduler (an in-memory panel, with or without fixed effects)
    loads none of them either: in particular not ``distributed``, which dask's own scheduler
    lookup (``dask.base.get_scheduler``) imports to look for a client (tornado, msgpack,
    click: ~20 MB of the fit's peak); no client can exist where it was never imported. The
    estimates are checked against statsmodels' GLM with dummies for the effect."""
    code = f"""
import numpy as np, xarray as xr
from daskglm import fit
rng = np.random.default_rng(0)
x = rng.normal(size=(30, 8))
a = rng.normal(scale=0.3, size=(30, 1)) if {fe} else 0.0
y = rng.poisson(np.exp(0.5 + 0.3 * x + a)).astype(float)
ds = xr.Dataset({{"y": (("i", "t"), y), "x": (("i", "t"), x)}})
res = fit(ds, "y", ["x"], "poisson", fe=["i"] if {fe} else None, progress=False)
import statsmodels.api as sm
X = np.column_stack([x.ravel(), np.kron(np.eye(30), np.ones((8, 1)))]) if {fe} else sm.add_constant(x.ravel())
ref = sm.GLM(y.ravel(), X, family=sm.families.Poisson()).fit()
beta = ref.params[0] if {fe} else ref.params[1]
assert abs(res.params["x"] - beta) < 1e-8 * abs(beta), (res.params, beta)
"""
    # the check imports statsmodels (and, through it, scipy.stats and scipy.optimize) after the
    # fit: the probe lists what is loaded just before that import
    names = [n for n in NEVER_FOR_A_FIT if n not in ("statsmodels", "scipy.stats", "scipy.optimize")]
    probe = code.replace(
        "import statsmodels.api as sm",
        f"import sys; loaded = [n for n in {names!r} if n in sys.modules]\nimport statsmodels.api as sm",
    )
    probe += "\nprint('LOADED', loaded)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "LOADED []"


def test_worker_kernels_load_the_kernels_layer_only():
    """What a worker unpickles for a pass (the kernels, the graph's tree sums, the worker plugins)
    does not bring the API, the front end, xarray or pandas with it."""
    code = (
        "import daskglm.kernels.chunk_numba, daskglm.kernels.effects_numba, daskglm.kernels.chunk, "
        "daskglm.kernels.effects, daskglm.runtime.workers"
    )
    optional = [n for n in NEVER_FOR_A_FIT if n != "distributed"]
    assert _loaded(code, optional + NOT_ON_A_WORKER + ["distributed", "numba"]) == ["distributed", "numba"]


def test_public_names_resolve_lazily():
    """Every name in ``__all__`` resolves, is listed by ``dir``; an unknown one is an AttributeError."""
    import daskglm

    for name in daskglm.__all__:
        assert getattr(daskglm, name) is not None
    assert set(daskglm.__all__) <= set(dir(daskglm))
    assert daskglm.fit.__module__ == "daskglm.api.fitting"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        daskglm.nonexistent  # noqa: B018


def test_pvalues_match_scipy_stats():
    """The p-values and normal quantiles through scipy.special equal scipy.stats' to the last bit."""
    import numpy as np
    from scipy import special, stats

    z = np.concatenate([np.random.default_rng(0).standard_normal(10_000) * 8, [0.0, 1e-300, 40.0, np.inf]])
    assert np.array_equal(2 * special.ndtr(-np.abs(z)), 2 * stats.norm.sf(np.abs(z)))
    q = np.linspace(0.5, 0.9999, 501)
    assert np.array_equal(special.ndtri(q), stats.norm.ppf(q))
    lr = np.abs(z[np.isfinite(z)])
    assert np.array_equal(special.chdtrc(1, lr), stats.chi2.sf(lr, 1))


def test_results_pvalues_against_statsmodels():
    """A fit's p-values and confidence intervals equal statsmodels' GLM on the same data."""
    import numpy as np
    import statsmodels.api as sm
    import xarray as xr

    import daskglm as dg

    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 8))
    y = rng.poisson(np.exp(0.3 + 0.2 * x))
    ds = xr.Dataset({"y": (("i", "t"), y.astype(float)), "x": (("i", "t"), x)})
    res = dg.fit(ds, "y", ["x"], "poisson")
    ref = sm.GLM(y.ravel(), sm.add_constant(x.ravel()), family=sm.families.Poisson()).fit()
    np.testing.assert_allclose(res.pvalues.to_numpy(), ref.pvalues, rtol=1e-8)
    np.testing.assert_allclose(res.conf_int().to_numpy(), ref.conf_int(), rtol=1e-8)
    assert list(res.pvalues.index) == ["Intercept", "x"]
