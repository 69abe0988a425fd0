"""The named-dim front end: from an ``xarray.Dataset`` (or a zarr store) to a :class:`Panel`.

This is where user input is checked against the rules of a panel, with messages that name the
variable and say how to fix it:

* the panel dims are the dims of ``y``; every other input spans a subset of them (covariates
  may add one trailing *feature* dim holding several columns, named ``var[label]``);
* coordinates must equal ``y``'s exactly (no silent reindexing), without duplicate labels;
* inputs must be numeric.

Covariates are grouped into :class:`~daskglm.kernels.layout.Block` s by the set of dims they span.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import xarray as xr

from ..graph import passes as graph
from ..kernels.families import Family
from ..kernels.layout import ArgSpec, Block, Layout

__all__ = ["Panel", "build_panel", "open_data"]

VarSpec = str | xr.DataArray | float | int | None


def open_data(data, storage_options: dict | None = None) -> xr.Dataset:
    """Open ``data``: an ``xarray.Dataset`` as is, a path or URL of a zarr store lazily.

    A store is opened with ``drop_variables=()`` (nothing dropped): xarray puts its options in
    the dask keys' token, so the fit's keys differ from those of the user's own
    ``xr.open_zarr(path)``. When the user has persisted that on a cluster, equal keys with
    another task behind them would make the scheduler warn of a "different run_spec" (dask
    issue 9888: failures and deadlocks can follow).
    """
    if isinstance(data, xr.Dataset):
        return data
    if isinstance(data, str | os.PathLike):
        try:
            return xr.open_zarr(os.fspath(data), storage_options=storage_options, drop_variables=())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"no zarr store at {os.fspath(data)!r}: {err}") from err
        except Exception as err:  # also aiohttp.ClientResponseError (HTTP 403), botocore errors
            storage_lib = type(err).__module__.split(".")[0] in _STORAGE_LIBS
            if isinstance(err, OSError | ValueError | KeyError | TypeError) or storage_lib:
                raise _store_error(os.fspath(data), storage_options, err) from err
            raise
    raise TypeError(
        f"data must be an xarray.Dataset or the path/URL of a zarr store, not {type(data).__name__}"
    )


#: libraries whose exceptions mean "the filesystem refused or failed", not a bug in daskglm
_STORAGE_LIBS = ("aiohttp", "botocore", "gcsfs", "adlfs", "fsspec")


def _store_error(where: str, storage_options: dict | None, err: Exception) -> OSError:
    """An error that says which store could not be opened and how to pass credentials."""
    hint = (
        "check the path, and pass the filesystem's credentials or options as "
        "storage_options={...} (e.g. {'anon': True} or {'headers': {...}})"
        if not storage_options
        else f"check the path and storage_options (keys given: {sorted(storage_options)})"
    )
    return OSError(f"could not open the zarr store {where!r}: {type(err).__name__}: {err}; {hint}")


@dataclass
class Panel:
    """A model's inputs, aligned and chunked, with the layout the kernels read.

    Attributes
    ----------
    layout : Layout
        Roles, dims and blocks of the arguments (no data).
    arrays : list of dask arrays
        One per ``layout.args``, chunked like ``y`` along the panel dims.
    coords : dict
        The panel dims' coordinate indexes (``pandas.Index``), for labels and predictions.
    user_order : list of str
        Parameter names in the order the user listed the covariates (intercept first).
    """

    layout: Layout
    arrays: list
    coords: dict[str, pd.Index]
    sizes: dict[str, int]
    user_order: list[str]
    chunks: tuple

    def with_family(self, family: Family) -> Panel:
        """The same data under another family (e.g. Poisson for NB2's likelihood-ratio test)."""
        return replace(self, layout=self.layout.with_family(family))

    def without_covariates(self) -> Panel:
        """The intercept-only panel (same cells, same offsets and weights)."""
        keep = [k for k, a in enumerate(self.layout.args) if a.role != "x" or self.layout.missing == "drop"]
        args = tuple(self.layout.args[k] for k in keep)
        block = Block(axes=(), columns=("Intercept",), sources=(), intercept=True)
        layout = Layout(self.layout.dims, args, (block,), self.layout.family, self.layout.missing)
        return replace(self, layout=layout, arrays=[self.arrays[k] for k in keep], user_order=["Intercept"])


def _fail(msg: str, exc=ValueError):
    raise exc(msg)


def _check_numeric(name: str, arr: xr.DataArray) -> None:
    if arr.dtype.kind not in "biuf":
        _fail(
            f"variable {name!r} has dtype {arr.dtype}, which is not numeric. Convert it first, "
            f"e.g. ds[{name!r}] = ds[{name!r}].astype(float) (categories need dummy columns or a "
            "fixed-effect block)",
            TypeError,
        )


def _resolve(ds: xr.Dataset, spec: VarSpec, role: str) -> tuple[str, xr.DataArray | float]:
    """Look up a variable given by name, DataArray or number."""
    if isinstance(spec, xr.DataArray):
        return str(spec.name if spec.name is not None else role), spec
    if isinstance(spec, bool) or not isinstance(spec, str | Hashable):
        _fail(f"{role}={spec!r}: give a variable name, a DataArray or a number", TypeError)
    if isinstance(spec, int | float | np.number):
        return f"{role}={spec}", float(spec)
    if spec not in ds.data_vars:
        avail = ", ".join(map(repr, list(ds.data_vars)[:20])) or "none"
        _fail(f"{role} variable {spec!r} is not in the dataset (its variables: {avail})", KeyError)
    return str(spec), ds[spec]


def _check_coords(name: str, arr: xr.DataArray, y: xr.DataArray) -> None:
    for dim in arr.dims:
        if dim not in y.dims:
            continue
        if arr.sizes[dim] != y.sizes[dim]:
            _fail(
                f"variable {name!r} has {arr.sizes[dim]} entries along dim {dim!r} but y has "
                f"{y.sizes[dim]}: align it first, e.g. {name} = {name}.reindex({dim}=y[{dim!r}])"
            )
        if dim in arr.indexes and dim in y.indexes:
            a, b = arr.indexes[dim], y.indexes[dim]
            if not a.equals(b):
                if not a.is_unique:
                    _fail(f"variable {name!r} has duplicate coordinate labels along dim {dim!r}")
                how = "the same labels in another order" if set(a) == set(b) else "different labels"
                _fail(
                    f"variable {name!r} does not align with y along dim {dim!r} ({how}; e.g. "
                    f"{a[0]!r} vs {b[0]!r} first). daskglm does not reindex silently: use "
                    f"{name} = {name}.reindex({dim}=y[{dim!r}]) if that is what you mean"
                )


def _panel_input(
    ds: xr.Dataset, spec: VarSpec, role: str, y: xr.DataArray, allow_feature: bool
) -> tuple[str, object, tuple[int, ...], str | None]:
    """Resolve, check and transpose one input; returns (name, values, axes, feature_dim)."""
    name, arr = _resolve(ds, spec, role)
    if isinstance(arr, float):
        return name, np.asarray(arr), (), None
    _check_numeric(name, arr)
    extra = [d for d in arr.dims if d not in y.dims]
    panel_dims = ", ".join(map(repr, y.dims))
    if extra and (not allow_feature or len(extra) > 1):
        what = (
            "a covariate may carry at most one extra (feature) dim"
            if allow_feature
            else (f"the {role} must span a subset of the panel dims")
        )
        _fail(
            f"{role} variable {name!r} has dim(s) {', '.join(map(repr, extra))} that are not panel "
            f"dims (y's dims: {panel_dims}); {what}. If a dim is a panel dim under another name, "
            f"rename it: ds = ds.rename({{{extra[0]!r}: ...}})"
        )
    feature = extra[0] if extra else None
    if feature is not None:
        # a feature dim that repeats a panel dim's labels is almost surely a misnamed panel dim
        for d in y.dims:
            if d not in arr.dims and d in y.indexes and feature in arr.indexes:
                if arr.indexes[feature].equals(y.indexes[d]):
                    _fail(
                        f"covariate {name!r} has dim {feature!r}, which is not a panel dim but has "
                        f"the same labels as panel dim {d!r}; rename it: "
                        f"ds[{name!r}] = ds[{name!r}].rename({{{feature!r}: {d!r}}})"
                    )
    _check_coords(name, arr, y)
    order = [d for d in y.dims if d in arr.dims] + ([feature] if feature else [])
    arr = arr.transpose(*order)
    axes = tuple(y.dims.index(d) for d in order if d != feature)
    return name, arr, axes, feature


def build_panel(
    data,
    y: str,
    x: Sequence[VarSpec] | str | None,
    family: Family,
    *,
    offset: VarSpec | Sequence[VarSpec] = None,
    exposure: VarSpec = None,
    weights: VarSpec = None,
    intercept: bool = True,
    missing: str = "raise",
    chunks=None,
    storage_options: dict | None = None,
    with_aux: bool = True,
) -> Panel:
    """Check the inputs and build the :class:`Panel` (no pass over the data yet)."""
    ds = open_data(data, storage_options)
    if missing not in ("raise", "drop"):
        _fail(f"missing={missing!r}: use 'raise' (the default) or 'drop'")
    yname, yarr = _resolve(ds, y, "y")
    if isinstance(yarr, float) or yarr.ndim == 0:
        _fail(f"y={y!r} must be a variable spanning the panel dims, not a scalar")
    _check_numeric(yname, yarr)
    for dim in yarr.dims:
        if dim in yarr.indexes and not yarr.indexes[dim].is_unique:
            dup = yarr.indexes[dim][yarr.indexes[dim].duplicated()][:3].tolist()
            _fail(
                f"y {yname!r} has duplicate coordinate labels along dim {dim!r} (e.g. {dup}); "
                "each cell of the panel must be unique: aggregate or drop duplicates first"
            )
    dims = tuple(str(d) for d in yarr.dims)
    args: list[ArgSpec] = []
    values: list = []
    features: list[bool] = []

    def add(name, arr, axes, role, feature=None):
        nf = int(arr.sizes[feature]) if feature else None
        args.append(ArgSpec(name=name, role=role, axes=axes, n_features=nf))
        values.append(arr.data if isinstance(arr, xr.DataArray) else arr)
        features.append(feature is not None)

    add(yname, yarr, tuple(range(len(dims))), "y")
    for role, spec in (("weights", weights), ("exposure", exposure)):
        if spec is not None:
            add(*_panel_input(ds, spec, role, yarr, False)[:3], role)
    offsets = offset if isinstance(offset, list | tuple) else ([] if offset is None else [offset])
    for spec in offsets:
        add(*_panel_input(ds, spec, "offset", yarr, False)[:3], "offset")
    if exposure is not None and not family.log_link:
        _fail(f"exposure= needs a log-link family; {family!r} has another link: use offset=")
    for role, spec in (family.aux_sources() if with_aux else {}).items():
        add(*_panel_input(ds, spec, role, yarr, False)[:3], role)

    if x is None:
        x = []
    elif isinstance(x, str | xr.DataArray):
        x = [x]
    groups: dict[tuple[int, ...], list[tuple[int, list[str]]]] = {}
    user_order = ["Intercept"] if intercept else []
    for spec in x:
        name, arr, axes, feature = _panel_input(ds, spec, "x", yarr, True)
        if feature is not None:
            cols = [f"{name}[{lab}]" for lab in arr.indexes.get(feature, range(arr.sizes[feature]))]
        else:
            cols = [name]
        dupes = set(cols) & set(user_order)
        if dupes:
            _fail(f"covariate {sorted(dupes)[0]!r} is listed twice in x")
        user_order += cols
        add(name, arr if isinstance(arr, xr.DataArray) else xr.DataArray(arr), axes, "x", feature)
        groups.setdefault(axes, []).append((len(args) - 1, cols))

    blocks = []
    if intercept:
        blocks.append(Block(axes=(), columns=("Intercept",), sources=(), intercept=True))
    for axes, members in groups.items():
        blocks.append(
            Block(
                axes=axes,
                columns=tuple(c for _, cs in members for c in cs),
                sources=tuple(k for k, _ in members),
            )
        )
    if not blocks:
        _fail("the model has no parameters: give covariates in x= or intercept=True")

    layout = Layout(dims, tuple(args), tuple(blocks), family, missing)
    ychunks = values[0].chunks if hasattr(values[0], "chunks") and values[0].chunks else None
    full_chunks = ychunks if chunks is None and ychunks else graph.full_chunks(yarr.shape, chunks)
    arrays = graph.align_arrays(values, [a.axes for a in args], features, full_chunks)
    coords = {d: yarr.indexes[d] if d in yarr.indexes else pd.RangeIndex(yarr.sizes[d]) for d in dims}
    sizes = {d: int(yarr.sizes[d]) for d in dims}
    return Panel(layout, arrays, coords, sizes, user_order, tuple(full_chunks))
