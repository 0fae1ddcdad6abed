"""What an invoke's ``with`` body binds and reads, and whether running it later, out of line, is safe.

>>> import ast
>>> from attrib.core.bodyscan import scan
>>> tree = ast.parse('''
... with model.trace() as tracer:
...     for p in prompts:
...         with tracer.invoke(p):
...             h = layer.output.save()
...             cache["h"] = h
... ''')
>>> s = scan(tree, tree.body[0].body[0].body[0])
>>> s.assigned, sorted(s.free), sorted(s.reads), sorted(s.written)
(('h',), ['cache', 'layer'], ['layer'], ['cache'])

A deferred body (:mod:`attrib.core.deferred`) runs when the trace block ends, after the code that follows it
and interleaved with the other invokes' bodies. :func:`scan` returns ``None`` — the body then runs in place,
as its own forward — where that would change what some code sees:

- statements whose meaning depends on the place (``return``, ``yield``, ``await``, ``global``, ``nonlocal``,
  ``del name``, ``break``/``continue`` of an outer loop), a ``with ... as name`` item, or a plain
  ``loss.backward()`` statement (NNsight's pre-0.5 ``.grad``-first form reads gradients in the order written);
- a first statement that compiles to no instruction of its own (``pass``, ``try``, a constant): the body is
  skipped by a trace function at its first line, which such a statement does not reach;
- a ``with`` or ``try`` between the invoke and its trace block (``torch.no_grad()``, an ``except`` the body's
  errors are meant for);
- any code of the user's between the invokes' ``with`` lines and the end of the trace block: the block must hold
  only invokes, directly or in ``for`` loops that hold only invokes (and be a ``with`` of one item), so that
  nothing reads what a body binds or changes, or changes what a body reads, before the bodies have run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["Scan", "scan"]

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_MUTATORS = frozenset({"append", "extend", "insert", "pop", "popitem", "clear", "update", "setdefault", "add",
                       "discard", "remove", "sort", "reverse", "__setitem__", "__delitem__"})
_FIRST_OK = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For, ast.With, ast.If, ast.While, ast.Expr,
             ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, *((ast.Match,) if hasattr(ast, "Match") else ()))


@dataclass(frozen=True)
class Scan:
    assigned: tuple[str, ...]         # names the body binds, in source order
    free: frozenset[str]              # names it reads and never binds
    read_first: frozenset[str]        # names it reads before (or without) binding them
    reads: frozenset[str]             # names of objects it does not bind and reads from (cache["h"], len(out))
    written: frozenset[str]           # names of objects it does not bind and changes (out.append, cache["h"] = )


def scan(tree: ast.Module, node: ast.With) -> Scan | None:
    """Read ``node``, an invoke's ``with`` statement in ``tree``; ``None`` where it must run in place."""
    if len(node.items) != 1 or node.items[0].optional_vars is not None:
        return None
    if node.body[0].lineno <= node.items[0].context_expr.end_lineno or not _first_ok(node.body[0]):
        return None
    if not all(_movable(statement) for statement in node.body):
        return None
    uses = _Uses()
    for statement in node.body:
        uses.visit(statement)
    assigned = tuple(dict.fromkeys(uses.stored))
    loaded = set(uses.loaded)
    if not _in_pure_block(node, _parents(tree)):
        return None
    own = set(assigned)
    return Scan(assigned, frozenset(loaded - own), frozenset(uses.first_loads),
                frozenset(set(uses.reads) - own), frozenset(set(uses.written) - own))


def _first_ok(statement: ast.stmt) -> bool:
    if not isinstance(statement, _FIRST_OK):
        return False
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return False
    if isinstance(statement, (ast.If, ast.While)) and isinstance(statement.test, ast.Constant):
        return False
    return not (isinstance(statement, ast.AnnAssign) and statement.value is None)


def _is_invoke(node: ast.AST) -> bool:
    if not isinstance(node, ast.With):
        return False
    call = node.items[0].context_expr
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "invoke"


def _is_trace(node: ast.AST) -> bool:
    return isinstance(node, ast.With) and any(
        isinstance(item.context_expr, ast.Call) and isinstance(item.context_expr.func, ast.Attribute)
        and item.context_expr.func.attr == "trace" for item in node.items)


def _in_pure_block(node: ast.With, parents: dict[int, ast.AST]) -> bool:
    """Whether the invoke sits in a trace block of the same function that holds nothing but invokes, directly or
    in ``for`` loops of nothing but invokes: then no code of the user's runs between the invokes' ``with`` lines
    and the end of the block, where the bodies run, except the loops' own ``for`` lines."""
    child: ast.AST = node
    while True:
        parent = parents.get(id(child))
        if parent is None or isinstance(parent, _SCOPES):
            return False
        if _is_trace(parent):
            return len(parent.items) == 1 and all(_only_invokes(s) for s in parent.body)
        if not (isinstance(parent, ast.For) and not parent.orelse):
            return False
        child = parent


def _only_invokes(statement: ast.stmt) -> bool:
    if _is_invoke(statement):
        return True
    return isinstance(statement, ast.For) and not statement.orelse and all(_only_invokes(s) for s in statement.body)


_parent_maps: dict[int, tuple[ast.Module, dict[int, ast.AST]]] = {}


def _parents(tree: ast.Module) -> dict[int, ast.AST]:
    cached = _parent_maps.get(id(tree))
    if cached is not None and cached[0] is tree:
        return cached[1]
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    if len(_parent_maps) > 64:
        _parent_maps.clear()
    _parent_maps[id(tree)] = (tree, parents)
    return parents


class _Uses(ast.NodeVisitor):
    """Names bound, loaded (in execution order where it matters: a value before its target), read from, and
    changed through (an item or attribute set, a mutating method called)."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.loaded: list[str] = []
        self.first_loads: list[str] = []
        self.reads: list[str] = []
        self.written: list[str] = []

    def _load(self, name: str, read: bool = True) -> None:
        if name not in self.stored and name not in self.loaded:
            self.first_loads.append(name)
        self.loaded.append(name)
        if read:
            self.reads.append(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.stored.append(node.id)
        elif isinstance(node.ctx, ast.Load):
            self._load(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._load(node.target.id)
        self.visit(node.target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for statement in (*node.body, *node.orelse):
            self.visit(statement)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.visit(node.target)

    def _chain(self, node: ast.Subscript | ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self.generic_visit(node)
            return
        base: ast.AST = node                     # x[i].y = v, del x[i]: x changes (and must exist)
        while isinstance(base, (ast.Subscript, ast.Attribute)):
            if isinstance(base, ast.Subscript):
                self.visit(base.slice)
            base = base.value
        if isinstance(base, ast.Name):
            self._load(base.id, read=False)
            self.written.append(base.id)
        else:
            self.visit(base)

    visit_Subscript = visit_Attribute = _chain

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
                func.attr in _MUTATORS or (func.attr.endswith("_") and not func.attr.startswith("_"))):
            self._load(func.value.id, read=False)   # out.append(x), x.zero_(): the object changes
            self.written.append(func.value.id)
            for arg in (*node.args, *node.keywords):
                self.visit(arg)
            return
        self.generic_visit(node)

    def _comprehension(self, node: ast.AST) -> None:
        inner = _Uses()
        for generator in node.generators:        # type: ignore[attr-defined]
            inner.visit(generator.iter)
            inner.visit(generator.target)
            for condition in generator.ifs:
                inner.visit(condition)
        for field in ("elt", "key", "value"):
            if hasattr(node, field):
                inner.visit(getattr(node, field))
        own = set(inner.stored)                  # its loop variables are its own (a scope of its own)
        for name in inner.loaded:
            if name not in own:
                self._load(name, read=name in inner.reads)
        self.written.extend(n for n in inner.written if n not in own)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def _scope(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for decorator in node.decorator_list:
                self.visit(decorator)
            self.stored.append(node.name)
        # names a nested scope reads are read when it runs: count them as read here
        for child in ast.walk(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Load):
                self.loaded.append(child.id)
                self.reads.append(child.id)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scope


class _Refuse(ast.NodeVisitor):
    def __init__(self) -> None:
        self.ok = True
        self.loops = 0

    def visit_FunctionDef(self, node: ast.AST) -> None:      # a nested scope: its own returns are its own
        return None

    visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = visit_FunctionDef

    def _loop(self, node: ast.AST) -> None:
        self.loops += 1
        self.generic_visit(node)
        self.loops -= 1

    visit_For = visit_While = visit_AsyncFor = _loop

    def _bad(self, node: ast.AST) -> None:
        self.ok = False

    visit_Return = visit_Yield = visit_YieldFrom = visit_Await = visit_Global = visit_Nonlocal = _bad

    def visit_Break(self, node: ast.AST) -> None:
        if not self.loops:
            self.ok = False

    visit_Continue = visit_Break

    def visit_Delete(self, node: ast.Delete) -> None:
        if any(isinstance(t, ast.Name) for t in node.targets):
            self.ok = False
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        call = node.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "backward":
            self.ok = False                                   # a plain backward: gradients read in written order
        self.generic_visit(node)


def _movable(statement: ast.stmt) -> bool:
    visitor = _Refuse()
    visitor.visit(statement)
    return visitor.ok
