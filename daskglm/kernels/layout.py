"""A small, picklable description of a model over a panel: arguments, blocks, parameters.

The front end (:mod:`daskglm.frontend.panel`) builds a :class:`Layout`; the numpy kernels
(:mod:`daskglm.kernels.chunk`) read it to make sense of the chunks they are handed; the graph
builder (:mod:`daskglm.graph.passes`) uses it to line the chunks up. No dask or xarray here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .families import Family

__all__ = ["ArgSpec", "Block", "Layout", "StatPacker"]


@dataclass(frozen=True)
class ArgSpec:
    """One array handed to the kernel.

    Attributes
    ----------
    name : str
        The variable's name, used in messages.
    role : str
        ``"y"``, ``"weights"``, ``"offset"``, ``"exposure"``, ``"trials"``, ``"event"`` or
        ``"x"``.
    axes : tuple of int
        The panel axes it spans, in panel order.
    n_features : int or None
        Length of its extra (feature) axis, last; ``None`` when it has none.
    sanitize : bool
        Whether non-finite values may appear at unused cells and must be replaced before use.
    """

    name: str
    role: str
    axes: tuple[int, ...]
    n_features: int | None = None
    sanitize: bool = True

    @property
    def width(self) -> int:
        return 1 if self.n_features is None else self.n_features


@dataclass(frozen=True)
class Block:
    """Covariates that vary along the same set of panel axes, with their coefficients.

    ``sources`` index :attr:`Layout.args`; ``()`` with the name ``"Intercept"`` is the
    constant. A later fixed-effect block (one coefficient per level of ``axes``) can subclass
    this and override how the kernel builds and contracts it.
    """

    axes: tuple[int, ...]
    columns: tuple[str, ...]
    sources: tuple[int, ...]
    intercept: bool = False

    @property
    def size(self) -> int:
        return len(self.columns)


@dataclass(frozen=True)
class Layout:
    """Everything the per-chunk kernel needs to know about the model, but no data."""

    dims: tuple[str, ...]
    args: tuple[ArgSpec, ...]
    blocks: tuple[Block, ...]
    family: Family
    missing: str = "raise"

    # ---------------------------------------------------------------- derived facts
    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def n_beta(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def n_params(self) -> int:
        return self.n_beta + self.family.n_extra

    @property
    def param_names(self) -> list[str]:
        names = [c for b in self.blocks for c in b.columns]
        return names + list(self.family.extra_names)

    @property
    def block_slices(self) -> list[slice]:
        out, start = [], 0
        for b in self.blocks:
            out.append(slice(start, start + b.size))
            start += b.size
        return out

    def role(self, role: str) -> list[int]:
        """Indices of the arguments with ``role``."""
        return [i for i, a in enumerate(self.args) if a.role == role]

    def with_family(self, family: Family) -> Layout:
        return Layout(self.dims, self.args, self.blocks, family, self.missing)


@dataclass
class StatPacker:
    """Packs named statistics of fixed shapes into one flat float64 vector, and back.

    Each chunk returns one packed vector, so that the tree-sum of the pass is a sum of
    vectors; the client unpacks the total.
    """

    fields: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def add(self, name: str, shape: tuple[int, ...] = ()) -> StatPacker:
        self.fields.append((name, tuple(shape)))
        return self

    @property
    def length(self) -> int:
        return int(sum(int(np.prod(s)) for _, s in self.fields))

    def pack(self, values: dict[str, np.ndarray | float]) -> np.ndarray:
        out = np.zeros(self.length)
        pos = 0
        for name, shape in self.fields:
            n = int(np.prod(shape))
            if name in values:
                out[pos : pos + n] = np.ravel(values[name])
            pos += n
        return out

    def unpack(self, vec: np.ndarray) -> dict[str, np.ndarray | float]:
        out: dict[str, np.ndarray | float] = {}
        pos = 0
        for name, shape in self.fields:
            n = int(np.prod(shape))
            piece = np.asarray(vec[pos : pos + n], dtype=np.float64)
            out[name] = float(piece[0]) if shape == () else piece.reshape(shape)
            pos += n
        return out
