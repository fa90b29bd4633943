"""No import cycles among segbench's modules, checked by walking each module's syntax tree.

A cycle makes import order matter and hides which module is the lower layer. Two graphs are
checked: the imports that run when a module is imported (module level), and every import,
function-level ones included — a late import inside a function only hides a cycle from the
interpreter, not from the reader (the label codec once lived in data/prepare.py, whose
converters imported, inside their functions, the datasets that imported the codec back).
``if TYPE_CHECKING:`` blocks never run and do not count. An edge goes to the module an import
names (``from segbench.data import voc`` → ``segbench.data.voc``), not to the packages above
it, whose ``__init__`` Python has already started by then.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "segbench"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _statements(body: list[ast.stmt], deep: bool):
    """The statements of ``body`` that may import: with ``deep``, every nested one; else those
    that run at import time (the top level and the branches of top-level if/try/with)."""
    for node in body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from _statements(node.orelse, deep)
        elif isinstance(node, (ast.If, ast.Try, ast.With)) or (deep and hasattr(node, "body")):
            yield node
            for field in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, field, []), deep)
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body, deep)
        else:
            yield node


def imports_of(name: str, source: str, modules, is_package: bool = False, deep: bool = False) -> set[str]:
    """The segbench modules (of ``modules``) that module ``name`` imports."""
    found = set()
    for node in _statements(ast.parse(source).body, deep):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(deep: bool) -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path.read_text(), modules, path.name == "__init__.py", deep)
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(graph: dict[str, set[str]], found: list[list[str]]) -> str:
    return "\n".join("; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in found)


def test_no_cycle_among_module_level_imports():
    graph = import_graph(deep=False)
    found = cycles(graph)
    assert not found, "import cycles among segbench modules:\n" + _describe(graph, found)


def test_no_cycle_even_through_function_level_imports():
    graph = import_graph(deep=True)
    found = cycles(graph)
    assert not found, "import cycles among segbench modules (function-level imports included):\n" + _describe(graph, found)


def test_the_walker_finds_cycles_and_resolves_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    modules = package_modules()
    source = ("import segbench.io\nfrom segbench.data import base\nfrom typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from segbench import api\n"
              "def f():\n    from segbench.data import voc\n")
    assert imports_of("segbench.probe", source, modules) == {"segbench.io", "segbench.data.base"}
    assert imports_of("segbench.probe", source, modules, deep=True) == {
        "segbench.io", "segbench.data.base", "segbench.data.voc"}
    assert imports_of("segbench.data.probe", "from .base import IGNORE_INDEX\nfrom . import voc\n",
                      modules) == {"segbench.data.base", "segbench.data.voc"}
