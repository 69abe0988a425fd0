"""Static checks of the package's structure, by parsing its source with :mod:`ast` (no imports).

* Families own what is theirs: no module outside ``families.py``, ``families_numba.py`` and
  ``registry.py`` compares a family's ``name``, compares anything with a registered family's
  name (or alias), keys a dict by family names, or uses ``isinstance``/``issubclass``/``type``
  with a concrete family class. A family's behaviour is a declared attribute or method of
  :class:`daskglm.families.Family` (``linear``, ``estimates_scale``, ``full_loglike``,
  ``dispersion``, ``ancillary``, ``separation_wording``, ``sample``, ...), so a new family is
  one class plus one registry entry.
* The layer rule of DEVELOPERS.md ("Layers"): imports go one way, from the public API down to
  the numpy kernels. :data:`LAYERS` below is that table as a mapping; a module missing from it
  fails the test (add it to DEVELOPERS.md's table and here).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from daskglm.registry import FAMILIES, FAMILY_ALIASES

PACKAGE = Path(__file__).resolve().parents[1] / "daskglm"
DEVELOPERS = PACKAGE.parent / "DEVELOPERS.md"

KERNELS, GRAPH, FRONT_END, ORCHESTRATION, API = range(5)
LAYER_NAMES = {
    KERNELS: "numpy kernels",
    GRAPH: "graph building",
    FRONT_END: "named-dim front end",
    ORCHESTRATION: "orchestration",
    API: "public API and CLI",
}

#: module (path relative to daskglm/, without .py) -> layer; DEVELOPERS.md's "Layers" table
LAYERS: dict[str, int] = {
    # numpy kernels: numpy, scipy (numba for the compiled kernels)
    "families": KERNELS,
    "families_numba": KERNELS,
    "layout": KERNELS,
    "contract": KERNELS,
    "kernels": KERNELS,
    "kernels_numba": KERNELS,
    "sweep_plan": KERNELS,
    "engines": KERNELS,
    "effects": KERNELS,
    "effects_numba": KERNELS,
    "qr": KERNELS,
    "double_double": KERNELS,
    "accurate": KERNELS,
    "checks": KERNELS,
    "inference": KERNELS,
    "clustering": KERNELS,
    "solvers/__init__": KERNELS,
    "solvers/base": KERNELS,
    "solvers/newton": KERNELS,
    "solvers/newton_schulz": KERNELS,
    "solvers/gradient": KERNELS,
    "solvers/preconditioning": KERNELS,
    # graph building: dask, the kernels
    "graph": GRAPH,
    "qr_graph": GRAPH,
    "accurate_graph": GRAPH,
    "effects_graph": GRAPH,
    # named-dim front end: xarray, pandas, graph
    "panel": FRONT_END,
    "engine": FRONT_END,
    "fixed_effects": FRONT_END,
    "fe_gradient": FRONT_END,
    "tables": FRONT_END,
    "formula": FRONT_END,
    # orchestration: dask/distributed config, tqdm
    "scheduling": ORCHESTRATION,
    "workers": ORCHESTRATION,
    "checkpoint": ORCHESTRATION,
    "progress": ORCHESTRATION,
    # public API and CLI: everything
    "api": API,
    "results": API,
    "fe_results": API,
    "report": API,
    "registry": API,
    "simulate": API,
    "cli": API,
    "__init__": API,
}

#: third-party packages a layer may not import (the lowest layer each may appear in is above)
FORBIDDEN = {
    KERNELS: {"dask", "distributed", "xarray", "pandas", "zarr", "pyarrow", "fsspec", "tqdm", "matplotlib"},
    GRAPH: {"distributed", "xarray", "pandas", "zarr", "pyarrow", "fsspec", "tqdm", "matplotlib"},
    FRONT_END: {"dask", "distributed", "tqdm", "matplotlib"},
    ORCHESTRATION: {"matplotlib"},
    API: set(),
}

#: (module, package) pairs the table allows beside its layer's rule, each with its reason
#: (written in DEVELOPERS.md's table too)
EXCEPTIONS = {
    ("tables", "dask"): "writes the long tables' panels to zarr chunk by chunk (dask.array)",
    ("tables", "tqdm"): "the ingest's progress bar",
    ("formula", "dask"): "the distinct levels of a dask-backed factor (dask.array.unique)",
}

EXEMPT_FAMILY_CHECK = {"families", "families_numba", "registry"}


def _modules() -> dict[str, Path]:
    return {str(p.relative_to(PACKAGE).with_suffix("")): p for p in sorted(PACKAGE.rglob("*.py"))}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(module: str, tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, name)`` of every import anywhere in the module (function-level ones too):
    project modules as ``daskglm/<path>`` keys of :data:`LAYERS`, others as their top package."""
    parts = module.split("/")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                head = base + (node.module.split(".") if node.module else [])
                # "from . import graph" names modules; "from .graph import x" names one
                names = (
                    ["daskglm." + ".".join(head + [a.name]) for a in node.names]
                    if node.module is None
                    else ["daskglm." + ".".join(head)]
                )
            else:
                names = [node.module]
                if node.module == "daskglm":
                    names = [f"daskglm.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "daskglm" or name.startswith("daskglm."):
                out.append((node.lineno, _project_module(name)))
            else:
                out.append((node.lineno, name.split(".")[0]))
    return out


def _project_module(name: str) -> str:
    """The :data:`LAYERS` key of an imported ``daskglm...`` name: the longest prefix that is a
    module (``daskglm.solvers.newton.newton`` -> ``solvers/newton``), else the package."""
    parts = name.split(".")[1:]
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[:n])
        if key in LAYERS:
            return key
        if f"{key}/__init__" in LAYERS:
            return f"{key}/__init__"
    return "__init__"


def test_every_module_has_a_layer():
    missing = sorted(set(_modules()) - set(LAYERS))
    assert not missing, (
        f"module(s) {missing} have no layer: add each to DEVELOPERS.md's 'Layers' table and to "
        "LAYERS in tests/test_architecture.py"
    )
    stale = sorted(set(LAYERS) - set(_modules()))
    assert not stale, f"LAYERS in tests/test_architecture.py names modules that do not exist: {stale}"


def test_developers_table_lists_every_module():
    """DEVELOPERS.md's table and :data:`LAYERS` say the same thing."""
    text = DEVELOPERS.read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LAYER_NAMES.values():
            rows[cells[0]] = cells[1]
    assert set(rows) == set(LAYER_NAMES.values()), f"DEVELOPERS.md's Layers table rows: {sorted(rows)}"
    for module, layer in LAYERS.items():
        name = "solvers/" if module.startswith("solvers/") else f"{module}.py"
        listed = re.findall(r"`([\w/]+(?:\.py)?/?)`", rows[LAYER_NAMES[layer]])
        row = LAYER_NAMES[layer]
        assert name in listed, f"DEVELOPERS.md's Layers table lacks `{name}` in its {row!r} row"


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_go_down_the_layers(module):
    path = _modules().get(module)
    if path is None:
        pytest.skip(f"{module} does not exist")
    layer = LAYERS[module]
    bad = []
    for line, name in _imports(module, _tree(path)):
        if name in LAYERS:
            if LAYERS[name] > layer:
                bad.append(
                    f"daskglm/{module}.py:{line} ({LAYER_NAMES[layer]}) imports {name} "
                    f"({LAYER_NAMES[LAYERS[name]]}), a higher layer"
                )
        elif name in FORBIDDEN[layer] and (module, name) not in EXCEPTIONS:
            bad.append(f"daskglm/{module}.py:{line} ({LAYER_NAMES[layer]}) imports {name}")
    assert not bad, "imports against DEVELOPERS.md's layer rule:\n" + "\n".join(bad)


def _family_names() -> set[str]:
    return set(FAMILIES) | set(FAMILY_ALIASES)


def _family_classes() -> set[str]:
    return {cls.__name__ for cls in FAMILIES.values()}


def _mentions(node: ast.AST, names: set[str]) -> bool:
    return any(
        (isinstance(n, ast.Name) and n.id in names) or (isinstance(n, ast.Attribute) and n.attr in names)
        for n in ast.walk(node)
    )


def _family_name_attribute(node: ast.AST) -> bool:
    """``<something family-like>.name`` (``self.family.name``, ``fam.name``, ``layout.family.name``)."""
    return (
        isinstance(node, ast.Attribute) and node.attr == "name" and "fam" in ast.unparse(node.value).lower()
    )


def family_branches(tree: ast.Module) -> list[tuple[int, str]]:
    """Places where code decides by which family it has instead of asking the family."""
    names, classes = _family_names(), _family_classes()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            consts = {
                c.value
                for o in operands
                for c in ast.walk(o)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
            if any(_family_name_attribute(o) for o in operands) or consts & names:
                out.append((node.lineno, f"compares with a family's name: {ast.unparse(node)}"))
            elif any(isinstance(o, ast.Call) and ast.unparse(o.func) == "type" for o in operands) and any(
                _mentions(o, classes) for o in operands
            ):
                out.append((node.lineno, f"compares a family's type: {ast.unparse(node)}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("isinstance", "issubclass") and len(node.args) == 2:
                if _mentions(node.args[1], classes):
                    out.append((node.lineno, f"tests for a concrete family class: {ast.unparse(node)}"))
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & names) >= 2:
                out.append((node.lineno, "a dict keyed by family names"))
        elif isinstance(node, ast.MatchValue) and isinstance(node.value, ast.Constant):
            if node.value.value in names:
                out.append((node.lineno, f"matches a family's name: {node.value.value!r}"))
    return out


@pytest.mark.parametrize("module", sorted(set(LAYERS) - EXEMPT_FAMILY_CHECK))
def test_no_module_branches_on_the_family(module):
    path = _modules().get(module)
    if path is None:
        pytest.skip(f"{module} does not exist")
    found = family_branches(_tree(path))
    assert not found, (
        "decide by a declared attribute or method of daskglm.families.Family instead (so that a "
        "new family is one class plus one registry entry):\n"
        + "\n".join(f"daskglm/{module}.py:{line}: {what}" for line, what in found)
    )


@pytest.mark.parametrize(
    "source",
    [
        'if self.family.name == "gaussian": pass',
        'x = 1 if fam.name != "binomial" else 2',
        'if family in ("poisson", "negative_binomial"): pass',
        "if isinstance(self.family, NegativeBinomial): pass",
        "if type(fam) is Gaussian: pass",
        'd = {"gaussian": 1.0, "poisson": 2.0}',
    ],
)
def test_the_family_check_sees_branches(source):
    """The checker itself flags each kind of branch it is meant to (and not plain uses)."""
    assert family_branches(ast.parse(source))
    assert not family_branches(ast.parse('print(f"{fam.name} family"); ok = isinstance(fam, Family)'))


def test_the_import_check_sees_imports():
    """Relative, absolute and function-level imports are all resolved to layer keys."""
    tree = ast.parse(
        "from .engine import x\nimport dask.array as da\nfrom .solvers.newton import newton\n"
        "def f():\n    from . import api\n    from daskglm import fit\n"
    )
    found = [name for _, name in _imports("qr", tree)]
    assert found == ["engine", "dask", "solvers/newton", "api", "__init__"]
    tree = ast.parse("from .base import Evaluation\nfrom ..graph import run\n")
    assert [name for _, name in _imports("solvers/gradient", tree)] == ["solvers/base", "graph"]
