"""The architecture of docs/architecture.md, checked: rooms import one way, nothing imports in a circle.

The import graph is read from the source with ``ast`` (every ``.py`` under ``harness/``,
``algorithms/`` and ``datasets/``; imports at module level and inside functions alike, so a
deferred import is held to the same rules), with ``metabench.harness.x.y`` names resolved to the
module they name. Two rules:

* no cycle between modules (a cycle hidden inside functions is still a cycle);
* each room imports only the rooms below it (:data:`MAY_IMPORT`), and only the engines import a
  backend (:data:`BACKEND_LIBRARIES`).

A new module must sit in a room (:data:`ROOMS`), and a new harness module must be named in the
module tree of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
SOURCE_FOLDERS = {"harness": "metabench.harness", "algorithms": "metabench.algorithms", "datasets": "metabench.datasets"}

#: room -> the modules it holds: a module belongs to the room of the longest prefix that names it.
ROOMS = {
    "errors": ("metabench.harness.errors",),
    "datasets": ("metabench.datasets",),
    "algorithms": ("metabench.algorithms",),
    "foundation": (
        "metabench.harness",  # the (empty) package itself
        "metabench.harness.config",
        "metabench.harness.registry",
        "metabench.harness.configs",
        "metabench.harness.sweeps",
        "metabench.harness.reproductions",
    ),
    "data": ("metabench.harness.data",),
    "engines": ("metabench.harness.engines",),
    "results": ("metabench.harness.results",),
    "analysis": ("metabench.harness.analysis",),
    "run": ("metabench.harness.run",),
    "testing": ("metabench.harness.testing",),
    "cli": ("metabench.harness.cli",),
}

#: room -> the other rooms its modules may import (a room may always import its own modules).
#: Read bottom-up: errors <- datasets, algorithms <- foundation <- data, engines <- results <-
#: analysis <- run <- testing <- cli. Nothing below the CLI imports the CLI; analysis never
#: imports run; algorithms and datasets import nothing of the harness but its errors.
MAY_IMPORT = {
    "errors": set(),
    "datasets": {"errors"},
    "algorithms": {"errors", "datasets"},
    "foundation": {"errors", "datasets", "algorithms"},
    "data": {"errors", "foundation", "datasets"},
    "engines": {"errors", "foundation"},
    "results": {"errors", "foundation", "data"},
    "analysis": {"errors", "foundation", "data", "results"},
    "run": {"errors", "foundation", "datasets", "algorithms", "data", "engines", "results", "analysis"},
    "testing": {"errors", "foundation", "datasets", "algorithms", "data", "engines", "results", "analysis", "run"},
    "cli": {"errors", "foundation", "datasets", "algorithms", "data", "engines", "results", "analysis", "run", "testing"},
}

#: Libraries that are a backend: only the engines import them (algorithms use keras.ops and the engine).
BACKEND_LIBRARIES = {"tensorflow": {"engines"}, "jax": {"engines"}}


# --------------------------------------------------------------------------------------- the graph


def module_name(path: Path) -> str:
    """``harness/run/core.py`` -> ``metabench.harness.run.core``; a package's ``__init__.py`` -> the package."""
    relative = path.relative_to(REPO).with_suffix("")
    parts = [SOURCE_FOLDERS[relative.parts[0]], *relative.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    """Every module of the three source folders, by its import name."""
    return {module_name(path): path for folder in SOURCE_FOLDERS for path in sorted((REPO / folder).rglob("*.py"))}


def imported_names(path: Path, module: str, known: set[str]) -> set[str]:
    """What ``module`` (at ``path``) imports anywhere in its source: internal modules by their full
    name, other libraries by their top-level name (``tensorflow``, ``keras``)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(_resolve(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else _resolve(base, known))
    found.discard(module)
    return found


def _resolve(name: str, known: set[str]) -> str:
    """The longest known module that ``name`` lies in, or the top-level name of a library."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in known:
            return prefix
    return parts[0]


def import_graph() -> dict[str, set[str]]:
    """Module -> every name it imports (internal modules in full, libraries by their top-level name)."""
    modules = source_modules()
    known = set(modules)
    return {module: imported_names(path, module, known) for module, path in modules.items()}


def room_of(module: str) -> str | None:
    best, room = -1, None
    for name, prefixes in ROOMS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, room = len(prefix), name
    return room


# --------------------------------------------------------------------------------------- the rules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the graph's own modules: each strongly connected component of more
    than one module (Tarjan's algorithm), members sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue  # a library
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"importer -> imported (room -> room)"`` for each import the rooms do not allow."""
    problems = []
    for module, names in sorted(graph.items()):
        room = room_of(module)
        for name in sorted(names):
            if name in graph:
                target = room_of(name)
                if target != room and target not in MAY_IMPORT[room]:
                    problems.append(f"{module} -> {name} ({room} may not import {target})")
            elif name in BACKEND_LIBRARIES and room not in BACKEND_LIBRARIES[name]:
                problems.append(f"{module} -> {name} (only {sorted(BACKEND_LIBRARIES[name])} import a backend)")
    return problems


# --------------------------------------------------------------------------------------- the tests


def test_every_module_sits_in_a_room():
    graph = import_graph()
    assert len(graph) > 50, sorted(graph)  # the walk found the sources: the checks bite
    assert {"metabench.harness.run.core", "metabench.harness.cli.main", "metabench.algorithms.maml"} <= set(graph)
    homeless = sorted(module for module in graph if room_of(module) is None)
    assert not homeless, f"modules outside every room of ROOMS (add them to a room and to docs/architecture.md): {homeless}"


def test_no_module_imports_in_a_circle():
    found = cycles(import_graph())
    assert not found, "import cycles (module-level and function-level imports count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_each_room_imports_only_the_rooms_below_it():
    problems = forbidden_imports(import_graph())
    assert not problems, "imports docs/architecture.md forbids:\n" + "\n".join(problems)


def test_function_level_imports_are_in_the_graph():
    """A deferred import counts: ``get_engine`` imports the chosen engine's module in a function."""
    graph = import_graph()
    assert "metabench.harness.engines.tensorflow" in graph["metabench.harness.engines"]
    assert "keras" in graph["metabench.harness.run.session"]  # deferred until the backend is chosen
    assert "metabench.harness.testing.check" in graph["metabench.harness.testing.pytest_plugin"]


def test_the_checker_reports_a_cycle_and_a_forbidden_import():
    synthetic = {
        "metabench.harness.analysis.a": {"metabench.harness.analysis.b", "numpy"},
        "metabench.harness.analysis.b": {"metabench.harness.analysis.c"},
        "metabench.harness.analysis.c": {"metabench.harness.analysis.a", "metabench.harness.run.core"},  # cycle; upward
        "metabench.harness.run.core": {"metabench.harness.analysis.a"},  # allowed: run may import analysis
        "metabench.harness.results.store": {"metabench.harness.cli.main"},  # the CLI from below
        "metabench.harness.cli.main": {"metabench.harness.results.store"},  # ... which also closes a cycle
        "metabench.algorithms.maml": {"tensorflow", "metabench.harness.errors"},  # a backend outside the engines
        "metabench.harness.engines.jax": {"jax"},  # allowed
        "metabench.harness.errors": set(),
    }
    assert cycles(synthetic) == [
        ["metabench.harness.analysis.a", "metabench.harness.analysis.b", "metabench.harness.analysis.c",
         "metabench.harness.run.core"],
        ["metabench.harness.cli.main", "metabench.harness.results.store"],
    ]  # fmt: skip
    assert forbidden_imports(synthetic) == [
        "metabench.algorithms.maml -> tensorflow (only ['engines'] import a backend)",
        "metabench.harness.analysis.c -> metabench.harness.run.core (analysis may not import run)",
        "metabench.harness.results.store -> metabench.harness.cli.main (results may not import cli)",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == [] and forbidden_imports({"metabench.harness.run.core": {"keras"}}) == []


def test_relative_and_from_imports_resolve_to_the_module_they_name(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from metabench.harness.data import episodes as ep\n"
        "from metabench.harness.results import DEFAULT_STORE\n"
        "import metabench.harness.run.core\n"
        "def f():\n    from .base import ClassPool\n    import tensorflow.compat.v1\n",
        encoding="utf-8",
    )
    known = {"metabench.harness.data.episodes", "metabench.harness.results", "metabench.harness.run.core", "metabench.datasets.base"}
    found = imported_names(source, "metabench.datasets.omniglot", known)
    assert found == known | {"tensorflow"}


def test_no_module_imports_a_private_name_of_another():
    found = []
    for module, path in source_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("metabench")):
                found += [f"{module}: from {node.module} import {alias.name}" for alias in node.names
                          if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not found, "private names imported across modules (make them public where they belong):\n" + "\n".join(found)


def doc_tree() -> set[str]:
    """The paths the module tree of docs/architecture.md names (two spaces of indent per folder level)."""
    text = DOC.read_text(encoding="utf-8")
    block = text[text.index("## Module tree"):].split("```")[1]
    paths, folders = set(), []
    for line in block.strip("\n").splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        else:
            paths.add("/".join([*folders, name]))
    return paths


def test_the_module_tree_of_the_doc_is_the_harness():
    named = {path for path in doc_tree() if path.startswith("harness/") and path.endswith(".py")}
    actual = {path.relative_to(REPO).as_posix() for path in (REPO / "harness").rglob("*.py") if _holds_code(path)}
    assert not actual - named, f"docs/architecture.md's module tree lacks: {sorted(actual - named)}"
    assert not named - actual, f"docs/architecture.md's module tree names modules that do not exist: {sorted(named - actual)}"


def _holds_code(path: Path) -> bool:
    """A module, or a package ``__init__.py`` with more than a docstring."""
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)
