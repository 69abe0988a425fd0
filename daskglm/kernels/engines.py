"""Which per-chunk engine runs the kernels: compiled (numba) or the numpy reference.

As in flox, the engine is a keyword (``engine="numba" | "numpy"``) of the graph layer and of
:func:`daskglm.fit`; ``None`` means the default, which is ``"numba"`` when numba imports and
can be overridden for a whole process with the environment variable ``DASKGLM_ENGINE``. The
numpy kernels are the reference (tests compare the two to 1e-12) and the fallback. No dask
here.
"""

from __future__ import annotations

import os
from functools import lru_cache

__all__ = ["ENGINES", "ENV_VAR", "numba_available", "default_engine", "resolve_engine"]

#: the engines there are
ENGINES = ("numba", "numpy")

#: environment variable that sets the default engine of a process
ENV_VAR = "DASKGLM_ENGINE"


@lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether numba imports (it is an optional accelerator)."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - exercised where numba is absent
        return False
    return True


def default_engine() -> str:
    """The engine used when none is given: ``DASKGLM_ENGINE`` if set, else ``"numba"`` when
    numba imports, else ``"numpy"``. An unknown or unavailable engine in the environment
    raises (see :func:`resolve_engine`)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _check(env.lower(), f"{ENV_VAR}={env!r}")
    return "numba" if numba_available() else "numpy"


def resolve_engine(engine: str | None = None) -> str:
    """Validate ``engine`` (``"numba"``, ``"numpy"`` or ``None`` for :func:`default_engine`).

    Raises
    ------
    ValueError
        For a name that is not an engine, or ``"numba"`` where numba does not import.
    """
    if engine is None:
        return default_engine()
    return _check(str(engine).lower(), f"engine={engine!r}")


def _check(name: str, where: str) -> str:
    if name not in ENGINES:
        raise ValueError(
            f"{where} is not an engine: use one of {ENGINES} (or leave it unset for the default)"
        )
    if name == "numba" and not numba_available():
        raise ValueError(
            f"{where} needs numba, which does not import here: `pip install numba`, or use engine='numpy'"
        )
    return name
