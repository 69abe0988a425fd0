"""Cluster specifications and multi-way cluster-robust covariances (pure python/numpy).

Clusters are cells of panel dims. ``cluster="i"`` or ``("i", "j")`` (fixest: ``"i^j"``) is
one-way clustering on the cells of those dims; a list ``["i", "j"]`` (fixest: ``"i + j"``) is
multi-way clustering (Cameron, Gelbach and Miller 2011): by inclusion-exclusion over the
intersections, ``V = V_i + V_j - V_(i,j)``, each computed one-way.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["parse_clusters", "intersections", "combine_cluster_meats"]


def _dims_of(entry, dims: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Panel dims named by a dim, a tuple of dims or fixest's ``"a^b"`` (in panel order)."""
    if isinstance(entry, str):
        names = tuple(p.strip() for p in entry.replace(":", "^").split("^"))
    else:
        names = tuple(entry)
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"{what} entry {entry!r} names no panel dim; give a dim or a tuple of dims")
    bad = [n for n in names if n not in dims]
    if bad:
        raise ValueError(
            f"{what} entry {entry!r}: {bad[0]!r} is not a panel dim (y's dims: {dims}); "
            "effects and clusters are cells of panel dims"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{what} entry {entry!r} repeats a dim")
    return tuple(d for d in dims if d in names)


def parse_clusters(cluster, dims: tuple[str, ...]) -> list[tuple[int, ...]]:
    """``cluster=`` as a list of cluster axis sets (more than one: multi-way clustering).

    A dim or tuple of dims (or fixest's ``"a^b"``) is one-way clustering on the cells of those
    dims; a list, or fixest's ``"a + b"``, is multi-way (Cameron-Gelbach-Miller).
    """
    if isinstance(cluster, str):
        parts = [p for p in cluster.split("+") if p.strip()]
    elif isinstance(cluster, list):
        parts = cluster
    else:
        parts = [cluster]
    out = []
    for p in parts:
        names = _dims_of(p, dims, "cluster=")
        axes = tuple(dims.index(d) for d in names)
        if axes in out:
            raise ValueError(f"cluster= lists {p!r} twice")
        out.append(axes)
    if not out:
        raise ValueError("cluster= names no dim; give the panel dims that define the clusters")
    return out


def intersections(ways: list[tuple[int, ...]]) -> list[tuple[tuple[int, ...], int]]:
    """The one-way clusterings whose covariances add up to the multi-way one, with signs:
    every non-empty subset of ``ways``, clustered on the union of its axes (the cells of an
    intersection of clusterings), signed ``(-1)^(size + 1)``."""
    out: dict[tuple[int, ...], int] = {}
    for r in range(1, len(ways) + 1):
        for subset in itertools.combinations(ways, r):
            axes = tuple(sorted(set().union(*subset)))
            out[axes] = out.get(axes, 0) + (-1) ** (r + 1)
    return [(axes, sign) for axes, sign in out.items() if sign != 0]


def combine_cluster_meats(meats: list[np.ndarray], signs: list[int]) -> np.ndarray:
    """``sum_s sign_s M_s`` over the one-way cluster meats of :func:`intersections`."""
    return sum(sign * M for M, sign in zip(meats, signs, strict=True))
