"""The architecture, checked: layers import only downward, no module import cycles, small plugin files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where each package's files live (algorithms/ and tasks/ install as rlbench.algorithms and rlbench.tasks)
SOURCES = {"rlbench": ROOT / "rlbench", "rlbench.algorithms": ROOT / "algorithms", "rlbench.tasks": ROOT / "tasks"}

# Lower layers never import higher ones. Within a layer anything goes (but no cycles, checked below). Each layer is
# one folder of rlbench/ (plus the plugin folders beside it), so the tree draws the architecture.
LAYERS = [
    ("foundation", ["rlbench.core"]),
    ("engine", ["rlbench.engine"]),
    ("plugins", ["rlbench.algorithms", "rlbench.tasks"]),
    ("runs", ["rlbench.run"]),
    ("comparisons", ["rlbench.study"]),
    ("cli", ["rlbench.cli", "rlbench.__main__"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "rlbench" and parts[:1] in (["algorithms"], ["tasks"]):
                continue
            found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """rlbench modules ``name`` imports anywhere in its body (lazy imports inside functions included)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _layer(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules) | {"rlbench"}
    return {name: _imports(name, path, known) - {"rlbench"} for name, path in modules.items() if name != "rlbench"}


def test_every_module_of_rlbench_sits_in_its_layers_folder():
    loose = sorted(p.name for p in (ROOT / "rlbench").glob("*.py") if p.name not in {"__init__.py", "__main__.py"})
    assert not loose, f"modules at the top of rlbench/, in no layer's folder: {loose}"
    folders = {p.name for p in (ROOT / "rlbench").iterdir() if (p / "__init__.py").is_file()}
    layer_folders = {prefix.removeprefix("rlbench.") for _, prefixes in LAYERS for prefix in prefixes}
    assert folders == layer_folders - {"algorithms", "tasks", "__main__"}


def test_layers_import_only_downward(graph):
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles(graph):
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, stack + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_the_engine_never_imports_evaluation_the_tiny_lab_or_plugins(graph):
    engine = {m: deps for m, deps in graph.items() if m.startswith("rlbench.engine")}
    assert len(engine) >= 10
    for module, deps in engine.items():
        assert all(_layer(d) <= 1 for d in deps), (module, deps)


@pytest.mark.parametrize("folder", ["algorithms", "tasks"])
def test_algorithm_and_task_modules_are_short(folder):
    from rlbench.core import registry

    table = registry.algorithms() if folder == "algorithms" else registry.tasks()
    files = {Path(__import__(cls.__module__, fromlist=["_"]).__file__) for cls in table.values()}
    assert files
    long = {f.name: n for f in files if (n := _lines_less_imports(f)) > 150}
    assert not long, f"over 150 lines (imports not counted): {long}"


def _lines_less_imports(path: Path) -> int:
    """Lines of a module, less its import statements: the formatter gives each imported name its own line."""
    text = path.read_text()
    imports = sum(
        node.end_lineno - node.lineno + 1
        for node in ast.parse(text).body
        if isinstance(node, (ast.Import, ast.ImportFrom))
    )
    return len(text.splitlines()) - imports
