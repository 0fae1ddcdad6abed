"""The package's import graph: no circle anywhere in attrib/, and layers only look down.

Every import counts, at module level or inside a function (a lazy import is still a dependency); only
imports under ``if TYPE_CHECKING:`` (annotations, never executed) are left out.
"""

from __future__ import annotations

import ast
import pathlib

import attrib

ROOT = pathlib.Path(attrib.__file__).parent

# What each part of the package may import (besides itself). The top-level attrib/__init__.py and the demo
# script sit above everything.
ALLOWED = {
    "errors": set(),
    "core": {"errors"},
    "viz": {"errors"},
    "models": {"errors", "core"},
    "results": {"errors", "viz"},
    "methods": {"errors", "core", "models", "results", "viz"},
    "runs": {"errors", "core", "models", "results", "viz", "methods"},
}


def module_name(path: pathlib.Path) -> str:
    parts = ["attrib", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The attrib modules that ``path`` imports (a name imported from a package counts as its submodule
    when one exists, else as the package)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("attrib"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("attrib"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) & modules for p in paths}


def test_the_graph_is_read():
    g = graph()
    assert "attrib.core.trace" in g and "attrib.core.handoff" in g["attrib.core.trace"]
    assert len(g) > 30


def cycles_in(g: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert cycles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle():
    assert cycles_in(graph()) == []


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_only_look_down():
    wrong = []
    for module, deps in graph().items():
        part = _part(module)
        if part not in ALLOWED:
            continue
        for dep in deps:
            other = _part(dep)
            if other != part and other not in ALLOWED[part]:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []
