"""Loading the compiled kernels ahead of a fit (``daskglm/kernels/preload.py``) and the sweep's
column list by cached compiled functions (``daskglm/kernels/columns_numba.py``).

What is checked: that :func:`preload.warm` loads every compiled specialisation a fit then uses
(a fresh interpreter records every numba dispatcher compile or cache load during the fits that
follow it: there must be none), that a fit racing the background thread (numba's compiler lock
between them) gives the estimates of the numpy engine and of statsmodels, that the thread does
not keep a fork's child or the interpreter's exit from finishing, and the small helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from daskglm.kernels import preload  # noqa: E402
from daskglm.kernels.columns_numba import COLUMN_TYPES, column_list  # noqa: E402
from daskglm.kernels.families import Poisson  # noqa: E402
from daskglm.kernels.layout import ArgSpec, Block, Layout  # noqa: E402


def _run(code: str, env: dict | None = None, timeout: float = 240) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    full_env = {**os.environ, **(env or {})}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


#: records every numba ``Dispatcher.compile`` (a cache load or a compilation) from here on
RECORD = """
import json, time
from numba.core import dispatcher as _disp
LOADS = []
_compile = _disp.Dispatcher.compile
def _recording(self, sig):
    LOADS.append(self.py_func.__module__ + "." + self.py_func.__qualname__)
    return _compile(self, sig)
_disp.Dispatcher.compile = _recording
"""


def test_warm_loads_everything_a_fit_uses():
    """After ``warm`` for float64, float32 and the effects, fits of every compiled family, on
    float64 and float32 panels, with and without effects and robust standard errors, load no
    compiled function: the tiny panel hits the specialisations real fits use."""
    code = (
        RECORD
        + """
import numpy as np
from daskglm.kernels import preload
for dtype in ("float64", "float32"):
    preload.warm(dtype, effects=True)
warmed = list(LOADS)
del LOADS[:]
import daskglm as dg
from daskglm.api.simulate import simulate_panel
fams = {"poisson": "poisson", "negative_binomial": dg.NegativeBinomial(alpha=None),
        "binomial": dg.Binomial(trials="trials"), "gaussian": "gaussian"}
for name, fam in fams.items():
    for dtype in (np.float64, np.float32):
        ds = simulate_panel({"i": 12, "j": 9, "k": 5}, name, seed=3, dtype=dtype).load()
        x = [v for v in ds.data_vars if v.startswith("x_")]
        dg.fit(ds, "y", x, fam, progress=False, cov_type="HC1")
        dg.fit(ds.chunk({"i": 6}), "y", x, fam, progress=False)
ds = simulate_panel({"i": 12, "j": 9, "k": 5}, "poisson", seed=4).load()
x = [v for v in ds.data_vars if v.startswith("x_ijk") or v.startswith("x_ik")]
dg.fit(ds, "y", x, "poisson", fe=["i", ("j", "k")], progress=False)
print(json.dumps({"warmed": warmed, "after": LOADS}))
"""
    )
    out = _run(code, env={"DASKGLM_PRELOAD": "0", "DASKGLM_ENGINE": "numba"})
    assert any(name.endswith("chunk_numba._sweep") for name in out["warmed"])
    assert out["after"] == []


def test_fit_racing_the_preload_thread():
    """A fit called at once after the import, while the background thread loads the same
    kernels, gives the numpy engine's estimates (1e-12) and statsmodels' (1e-8); the thread
    finished without error."""
    code = """
import json
import numpy as np
from daskglm import fit
from daskglm.kernels import preload
from daskglm.api.simulate import simulate_panel
ds = simulate_panel({"i": 30, "j": 20, "k": 8}, "poisson", seed=5).load()
x = [v for v in ds.data_vars if v.startswith("x_")]
res = fit(ds, "y", x, "poisson", progress=False)
ref = fit(ds, "y", x, "poisson", progress=False, engine="numpy")
preload.wait()
import statsmodels.api as sm
cols = [ds[v].broadcast_like(ds["y"]).transpose(*ds["y"].dims).to_numpy().ravel() for v in x]
X = np.column_stack([np.ones(ds["y"].size)] + cols)
sm_params = sm.GLM(ds["y"].to_numpy().ravel(), X, family=sm.families.Poisson()).fit().params
ours = res.params[["Intercept"] + x].to_numpy()
print(json.dumps({
    "numpy": float(np.max(np.abs(res.params.to_numpy() - ref.params[res.params.index].to_numpy()))),
    "statsmodels": float(np.max(np.abs(ours - sm_params))),
    "status": {str(k): (v if isinstance(v, (dict, str)) else repr(v)) for k, v in preload.status().items()},
}))
"""
    out = _run(code, env={"DASKGLM_PRELOAD": "1", "DASKGLM_ENGINE": "numba"})
    assert out["numpy"] < 1e-12
    assert out["statsmodels"] < 1e-8
    assert list(out["status"]) == ["('float64', False)"]
    assert isinstance(out["status"]["('float64', False)"], dict)  # seconds per step: no exception


def test_fork_and_exit_while_preloading():
    """A fork right after the import (thread still loading) waits for the thread, so the child
    can run the compiled kernels (it would deadlock on a compiler lock held by a thread that
    does not exist in it); the interpreter then exits cleanly with the thread joined."""
    code = """
import json, os
from daskglm import fit
pid = os.fork()
if pid == 0:
    from daskglm.kernels import preload
    preload.warm("float64")
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(json.dumps({"child": os.waitstatus_to_exitcode(status)}))
"""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    out = _run(code, env={"DASKGLM_PRELOAD": "1", "DASKGLM_ENGINE": "numba"}, timeout=120)
    assert out["child"] == 0


def test_start_is_off_by_environment(monkeypatch):
    """``DASKGLM_PRELOAD=0`` and the numpy engine turn it off; an unknown dtype starts nothing."""
    monkeypatch.setenv(preload.ENV_VAR, "0")
    assert not preload.enabled()
    assert preload.start() is None
    monkeypatch.setenv(preload.ENV_VAR, "1")
    monkeypatch.setenv("DASKGLM_ENGINE", "numpy")
    assert not preload.enabled()
    assert preload.start() is None
    monkeypatch.setenv("DASKGLM_ENGINE", "numba")
    assert preload.enabled()
    assert preload.start("int8") is None
    with pytest.raises(ValueError, match="dtype='int8'"):
        preload.warm("int8")


def test_start_runs_once_per_key(monkeypatch):
    """The same (dtype, effects) twice is one thread; the warm-up reports its steps' seconds."""
    monkeypatch.setenv(preload.ENV_VAR, "1")
    monkeypatch.setenv("DASKGLM_ENGINE", "numba")
    first = preload.start("float64")
    assert preload.start("float64") is first
    assert preload.wait(120)
    done = preload.status()[("float64", False)]
    assert set(done) == {"setup", "eval"} and all(v >= 0 for v in done.values())


def _layout(full_dtypes):
    args = [ArgSpec("y", "y", (0, 1))]
    blocks = [Block((), ("Intercept",), (), intercept=True)]
    for k, _ in enumerate(full_dtypes):
        args.append(ArgSpec(f"x{k}", "x", (0, 1)))
        blocks.append(Block((0, 1), (f"x{k}",), (len(args) - 1,)))
    args.append(ArgSpec("s", "x", (0,)))
    blocks.append(Block((0,), ("s",), (len(args) - 1,)))
    layout = Layout(("i", "j"), tuple(args), tuple(blocks), Poisson())
    return layout, [np.float32] + list(full_dtypes) + [np.float32]


def test_column_dtype_follows_the_full_grid_covariates():
    """float32 only when every full-grid covariate is float32 (as the sweep's column list);
    y's and the small covariates' dtypes do not matter."""
    assert preload.column_dtype(*_layout([np.float32, np.float32])) == "float32"
    assert preload.column_dtype(*_layout([np.float32, np.float64])) == "float64"
    assert preload.column_dtype(*_layout([])) == "float64"


def test_column_list():
    """Read-only and writable columns, conversion to the list's dtype, an empty list, and a
    clear error for a dtype the sweep has no specialisation for."""
    a = np.arange(4.0)
    b = np.arange(4.0)
    b.flags.writeable = False
    lst = column_list([a, b, np.arange(4, dtype=np.float32), np.arange(8.0)[::2]], np.float64)
    assert lst._list_type.item_type == COLUMN_TYPES[np.dtype(np.float64)]
    assert [list(c) for c in lst] == [[0.0, 1.0, 2.0, 3.0]] * 3 + [[0.0, 2.0, 4.0, 6.0]]
    lst32 = column_list([np.ones(3, np.float32)], np.float32)
    assert lst32._list_type.item_type == COLUMN_TYPES[np.dtype(np.float32)]
    assert len(column_list([], np.float64)) == 0
    with pytest.raises(ValueError, match="dtype int64 is not a column dtype"):
        column_list([np.arange(3)], np.int64)


def test_cache_ready_looks_where_numba_caches(monkeypatch, tmp_path):
    """A cache folder without the sweep's index is cold; an index of this numba for the kernel's
    source as it is (numba's stamp: a hash of its bytes), listing a specialisation, is ready,
    however old its file; one for other source bytes (an edited kernel), of another numba version,
    empty or unreadable is stale, hence cold."""
    import pickle

    from numba.core import caching, config

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))
    assert not preload.cache_ready()
    source = Path(preload.__file__).with_name("chunk_numba.py")
    folder = tmp_path / caching._CacheLocator.get_suitable_cache_subpath(str(source))
    folder.mkdir(parents=True)
    index = folder / "chunk_numba._sweep-100.py311.nbi"
    stamp = caching._SourceFileBackedLocatorMixin.get_source_stamp(type("L", (), {"_py_file": str(source)}))

    def write(version, saved, overloads):
        index.write_bytes(pickle.dumps(version) + pickle.dumps((saved, overloads)))

    write(numba.__version__, stamp, {"signature": "data file"})
    old = source.stat().st_mtime - 10
    os.utime(index, (old, old))  # older than the source file, the same bytes: numba loads it
    assert preload.cache_ready()
    write(numba.__version__, b"another source", {"signature": "data file"})
    assert not preload.cache_ready()
    write("0.1.0", stamp, {"signature": "data file"})
    assert not preload.cache_ready()
    write(numba.__version__, stamp, {})
    assert not preload.cache_ready()
    index.write_bytes(b"")
    assert not preload.cache_ready()
