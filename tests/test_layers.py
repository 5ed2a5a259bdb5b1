"""The package's layers: models -> attr -> metrics/analysis -> widgets/evaluate/cli.

``metrics``, ``analysis``, ``core`` and ``models`` must not depend on the methods (``attr``) nor
on the front ends: checked on the source (every import, also those inside functions, followed
transitively) and at run time (what importing them actually loads).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_widgets"


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    path = PACKAGE.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imports(name: str) -> set[str]:
    """The ``ssl_widgets`` modules that module ``name`` imports (anywhere in its source), with the
    packages whose ``__init__`` an import runs (the lazy top-level ``ssl_widgets/__init__`` excepted)."""
    path = _module_file(name)
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            targets = [base_name] + [f"{base_name}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if not target.startswith("ssl_widgets."):
                continue
            parts = target.split(".")
            for k in range(2, len(parts) + 1):  # the parent packages run their __init__ too
                if _module_file(".".join(parts[:k])) is not None:
                    found.add(".".join(parts[:k]))
    return found


def _closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imports(name) - seen)
    return seen


LOWER_LAYERS = ["ssl_widgets.core", "ssl_widgets.models", "ssl_widgets.models.state", "ssl_widgets.analysis",
                "ssl_widgets.metrics", "ssl_widgets.metrics.common", "ssl_widgets.metrics.average_drop",
                "ssl_widgets.metrics.insertion_deletion", "ssl_widgets.metrics.sensitivity"]
UPPER = ("ssl_widgets.attr", "ssl_widgets.widgets", "ssl_widgets.evaluate", "ssl_widgets.cli", "ssl_widgets.explain")


@pytest.mark.parametrize("module", LOWER_LAYERS)
def test_lower_layers_do_not_import_methods_or_front_ends(module):
    reached = _closure(module)
    assert len(reached) > 1 or module == "ssl_widgets.core"
    bad = sorted(m for m in reached if m.startswith(UPPER))
    assert not bad, f"{module} imports {bad}"


def test_core_is_pure_tensor_code():
    assert _closure("ssl_widgets.core") == {"ssl_widgets.core"}


def test_the_checker_sees_an_import_of_attr():
    """The method layer itself does reach attr (the checker is not blind)."""
    assert "ssl_widgets.attr.engine" in _closure("ssl_widgets.attr.cam")
    assert "ssl_widgets.attr" in _closure("ssl_widgets.explain")


@pytest.mark.background_process(
    [sys.executable, "-c", "import sys, ssl_widgets.metrics, ssl_widgets.analysis, ssl_widgets.models.state\n"
     "print(sorted(m for m in sys.modules if m.startswith(('ssl_widgets.attr', 'ssl_widgets.widgets', 'captum', "
     "'ipywidgets'))))"], cwd=PACKAGE.parent, timeout=120)
def test_importing_metrics_and_analysis_loads_no_method_module(background_process):
    out = background_process
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout


def _all_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in graph[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return cycles


def _module_graph() -> dict[str, set[str]]:
    """Every ``ssl_widgets`` module -> the modules it imports, at the top or inside a function. A module's
    own parent packages are left out: Python runs them first, so ``attr/cam`` reading ``attr`` is no cycle."""
    modules = _all_modules()
    return {name: {t for t in _imports(name) if not name.startswith(t + ".") and t in modules} for name in modules}


def test_no_import_cycles_even_through_imports_inside_functions():
    cycles = _import_cycles(_module_graph())
    assert not cycles, f"import cycles (an import inside a function only hides them): {cycles}"


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _import_cycles(graph) == [["a", "b", "c"]]
    assert _module_graph()["ssl_widgets.models.locks"] >= {"ssl_widgets.models.wrapper"}  # imported in a function


def test_no_two_classes_share_a_name():
    """One name, one class: two different ``DINOHead`` classes made readers guess which one a model holds."""
    where: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                where.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: files for name, files in where.items() if len(files) > 1}
    assert not shared, f"classes defined twice under one name: {shared}"
