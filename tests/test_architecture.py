"""The import graph keeps its shape (see ARCHITECTURE.md): no import cycle between
modules, and no arrow from a lower package to a higher one.

Layers, lowest first: ``ratchet`` < ``feedback`` < ``training`` < ``serving`` <
``infra``. A module may import its own package and those below it, with one
narrowing: serving reaches training only through :data:`SERVING_MAY_IMPORT`
(the registry, which loads no torch, and the operator operations module).

Every import counts, also those inside functions (lazy imports are arrows at run
time) and under ``TYPE_CHECKING``; the implicit import of a module's parent
package (``import a.b.c`` runs ``a/b/__init__.py``) does not. The imports are
read with :mod:`ast`; nothing is imported. The last tests run the same check on
a small tree with a cycle and an upward arrow, to show that it fails on them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("ratchet", "feedback", "training", "serving", "infra")
# serving -> training: only these modules (and their submodules).
SERVING_MAY_IMPORT = ("training.registry", "training.operations")


def modules(root: Path) -> dict[str, Path]:
    """``{dotted.name: file}`` for every module of the layered packages under ``root``."""
    found: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """Every dotted name ``module`` imports (``from a import b`` gives ``a.b``), with its line."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # a submodule, else a name in ``base``
                yield f"{base}.{alias.name}", node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` between the modules under ``root``."""
    mods = modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for dotted, line in _imported_names(tree, name, path.name == "__init__.py"):
            target = dotted
            while target and target not in mods:  # `from a.b import func` -> a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_arrows(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports that break the layering, as ``a (line n) -> b: why``."""
    bad = []
    for source, edges in sorted(graph.items()):
        src_layer = LAYERS.index(source.split(".")[0])
        for target, line in sorted(edges.items()):
            top = target.split(".")[0]
            dst_layer = LAYERS.index(top)
            if dst_layer > src_layer:
                bad.append(f"{source} (line {line}) -> {target}: {top} is above")
            elif source.split(".")[0] == "serving" and top == "training":
                if not any(target == m or target.startswith(m + ".") for m in SERVING_MAY_IMPORT):
                    bad.append(
                        f"{source} (line {line}) -> {target}: serving may import only "
                        f"{', '.join(SERVING_MAY_IMPORT)} from training"
                    )
    return bad


def problems(root: Path) -> list[str]:
    graph = import_graph(root)
    return [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)] + upward_arrows(graph)


def test_the_tree_has_no_import_cycle_and_no_upward_arrow() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 100  # the walk found the packages
    assert "ratchet.cli" in graph and "serving.app" in graph
    assert problems(ROOT) == []


def test_the_ground_floor_imports_no_ratchet_package() -> None:
    graph = import_graph(ROOT)
    ground = {t for s, edges in graph.items() if s.startswith("ratchet") for t in edges}
    assert all(t.startswith("ratchet") for t in ground), ground


# ---- the check fails where it should --------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for package in LAYERS:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_cycle_fails(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "training/cli.py": "def main():\n    from training.models_cli import run\n",
            "training/models_cli.py": "from training.cli import main\n",
            "training/gates.py": "from . import cli\n",  # relative, no cycle
        },
    )
    assert problems(root) == ["import cycle: training.cli <-> training.models_cli"]


def test_an_upward_arrow_fails(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "serving/cli.py": "class CliError(Exception): ...\n",
            "training/cli.py": "import os\n\nfrom serving.cli import CliError\n",
            "ratchet/db.py": "import feedback\n",
            "serving/app.py": "from training.registry import get\nfrom training import cycle\n",
            "training/registry.py": "def get(): ...\n",
            "training/cycle.py": "",
        },
    )
    assert problems(root) == [
        "ratchet.db (line 1) -> feedback: feedback is above",
        "serving.app (line 2) -> training.cycle: serving may import only "
        "training.registry, training.operations from training",
        "training.cli (line 3) -> serving.cli: serving is above",
    ]
