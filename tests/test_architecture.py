"""Static checks of the package's structure, by parsing its source with :mod:`ast` (no imports).

* Families own what is theirs: no module outside ``kernels/families.py``, ``kernels/families_numba.py`` and
  ``api/registry.py`` compares a family's ``name``, compares anything with a registered family's
  name (or alias), keys a dict by family names, or uses ``isinstance``/``issubclass``/``type``
  with a concrete family class. A family's behaviour is a declared attribute or method of
  :class:`daskglm.kernels.families.Family` (``linear``, ``estimates_scale``, ``full_loglike``,
  ``dispersion``, ``ancillary``, ``separation_wording``, ``sample``, ...), so a new family is
  one class plus one registry entry.
* The layer rule of DEVELOPERS.md ("Layers"): imports go one way, from the public API down to
  the numpy kernels. A module's layer is the folder it lives in (:data:`FOLDERS`); a module in no
  layer folder fails the test (move it into one and add it to DEVELOPERS.md's table).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from daskglm.api.registry import FAMILIES, FAMILY_ALIASES

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

#: layer folder of daskglm/ -> layer; DEVELOPERS.md's "Layers" table. A module's layer is the folder
#: it lives in (``solvers/`` sits beside ``kernels/`` in the lowest layer); the package's own
#: ``__init__.py`` is the public API.
FOLDERS: dict[str, int] = {
    "kernels": KERNELS,
    "solvers": KERNELS,
    "graph": GRAPH,
    "frontend": FRONT_END,
    "runtime": ORCHESTRATION,
    "api": API,
}


def _layer_of(module: str) -> int | None:
    """The layer of a module key (``kernels/families``), None if it is in no layer folder."""
    if module == "__init__":
        return API
    folder, _, rest = module.partition("/")
    return FOLDERS.get(folder) if rest else None


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
    ("frontend/zarr_store", "dask"): "writes the long tables' panels to zarr chunk by chunk (dask.array)",
    ("frontend/zarr_store", "tqdm"): "the ingest's progress bar",
    ("frontend/formula", "dask"): "the distinct levels of a dask-backed factor (dask.array.unique)",
}

EXEMPT_FAMILY_CHECK = {"kernels/families", "kernels/families_numba", "api/registry"}


def _modules() -> dict[str, Path]:
    return {str(p.relative_to(PACKAGE).with_suffix("")): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(module: str, tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, name)`` of every import anywhere in the module (function-level ones too):
    project modules as their keys (``kernels/families``), others as their top package."""
    parts = module.split("/")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
                head = base + (node.module.split(".") if node.module else [])
                # "from ..graph import passes" names a module; "from .families import Poisson" one
                names = ["daskglm." + ".".join(head + [a.name]) for a in node.names]
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
    """The module key of an imported ``daskglm...`` name: the longest prefix that is a module
    (``daskglm.solvers.newton.newton`` -> ``solvers/newton``), else the package."""
    parts = name.split(".")[1:]
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[:n])
        if key in MODULES:
            return key
        if f"{key}/__init__" in MODULES:
            return f"{key}/__init__"
    return "__init__"


def test_every_module_has_a_layer():
    """Every module lives in a layer's folder, so the listing of daskglm/ shows the layers."""
    missing = sorted(m for m in MODULES if _layer_of(m) is None)
    assert not missing, (
        f"module(s) {missing} are in no layer folder ({sorted(FOLDERS)}): move each into the folder of "
        "its layer and add it to DEVELOPERS.md's 'Layers' table"
    )


def test_developers_table_lists_every_module():
    """DEVELOPERS.md's table lists every module in the row of its folder's layer."""
    text = DEVELOPERS.read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in LAYER_NAMES.values():
            rows[cells[0]] = cells[1]
    assert set(rows) == set(LAYER_NAMES.values()), f"DEVELOPERS.md's Layers table rows: {sorted(rows)}"
    for module in MODULES:
        if module.endswith("__init__"):
            continue
        layer = _layer_of(module)
        name = "solvers/" if module.startswith("solvers/") else f"{module}.py"
        listed = re.findall(r"`([\w/]+(?:\.py)?/?)`", rows[LAYER_NAMES[layer]])
        row = LAYER_NAMES[layer]
        assert name in listed, f"DEVELOPERS.md's Layers table lacks `{name}` in its {row!r} row"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    layer = _layer_of(module)
    bad = []
    for line, name in _imports(module, _tree(MODULES[module])):
        if name in MODULES:
            if _layer_of(name) > layer:
                bad.append(
                    f"daskglm/{module}.py:{line} ({LAYER_NAMES[layer]}) imports {name} "
                    f"({LAYER_NAMES[_layer_of(name)]}), a higher layer"
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


@pytest.mark.parametrize("module", sorted(set(MODULES) - EXEMPT_FAMILY_CHECK))
def test_no_module_branches_on_the_family(module):
    found = family_branches(_tree(MODULES[module]))
    assert not found, (
        "decide by a declared attribute or method of daskglm.kernels.families.Family instead (so that a "
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
        "from ..frontend.objective import x\nimport dask.array as da\nfrom ..solvers.newton import newton\n"
        "def f():\n    from ..api import fitting\n    from daskglm import fit\n    from . import layout\n"
    )
    found = [name for _, name in _imports("kernels/qr", tree)]
    assert found == [
        "frontend/objective",
        "dask",
        "solvers/newton",
        "api/fitting",
        "__init__",
        "kernels/layout",
    ]
    tree = ast.parse("from .base import Evaluation\nfrom ..graph import passes as graph\n")
    assert [name for _, name in _imports("solvers/gradient", tree)] == ["solvers/base", "graph/passes"]
