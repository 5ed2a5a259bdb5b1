"""The explorer stays in parts: no import cycle in widgets/, no long function, tabs and plots use the public context.

Static checks with ``ast`` (no import, no torch): they read the source of ``ssl_widgets/widgets``.
"""
import ast
from pathlib import Path

import pytest

WIDGETS = Path(__file__).resolve().parents[1] / "ssl_widgets" / "widgets"
MODULES = sorted(p.stem for p in WIDGETS.glob("*.py"))
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def tree(module: str) -> ast.Module:
    return ast.parse((WIDGETS / f"{module}.py").read_text())


def sibling(node: ast.ImportFrom) -> list[str]:
    """The widgets modules a ``from . import x`` / ``from .x import y`` statement imports."""
    if node.level != 1:
        return []
    if node.module:
        return [node.module.split(".")[0]]
    return [alias.name for alias in node.names]


def module_level_imports(module: str) -> set[str]:
    """Sibling modules imported when ``module`` is imported (not under ``if TYPE_CHECKING:``, not in functions)."""
    found: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.ImportFrom):
                found.update(sibling(node))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(tree(module).body)
    return found & set(MODULES)


def import_graph() -> dict[str, set[str]]:
    return {m: module_level_imports(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def dfs(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if state.get(nxt) is None and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_widgets_import_graph_has_no_cycle():
    graph = import_graph()
    assert graph["explorer"] >= {"jobs", "context", "controls"}  # the parser sees the imports
    assert find_cycle(graph) is None, f"import cycle in ssl_widgets/widgets: {find_cycle(graph)}"


@pytest.mark.parametrize("module", MODULES)
def test_no_function_local_import_of_a_sibling_widgets_module(module):
    """A function-local import of a sibling module hides an import cycle; only ``TYPE_CHECKING`` imports may be
    deferred."""
    local = []
    for function in ast.walk(tree(module)):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and set(sibling(node)) & set(MODULES):
                    local.append(f"{module}.{function.name}: from .{node.module or ''} import ...")
    assert not local, local


@pytest.mark.parametrize("module", MODULES)
def test_no_long_functions_or_modules(module):
    source = (WIDGETS / f"{module}.py").read_text()
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long
    assert len(source.splitlines()) <= MAX_MODULE_LINES


def test_explorer_module_is_well_under_the_module_limit():
    assert len((WIDGETS / "explorer.py").read_text().splitlines()) <= 300


@pytest.mark.parametrize("module", [m for m in MODULES if m != "explorer"])
def test_parts_use_no_private_attribute_of_another_object(module):
    """Tabs, plots and the other parts reach the explorer through its public ExplorerContext: no ``x._name``
    unless ``x`` is ``self`` or ``cls`` (the click mixin is part of the explorer's own class)."""
    private = [ast.unparse(node) for node in ast.walk(tree(module))
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
               and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert not private, private
