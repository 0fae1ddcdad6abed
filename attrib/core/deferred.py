"""The body of a ``with`` block, taken out to run later: how invokes of one trace run as one batch.

>>> import sys
>>> from attrib.core.deferred import defer_body
>>> class Later:
...     def __enter__(self):
...         self.body = defer_body(sys._getframe(1))
...         return self
...     def __exit__(self, *exc):
...         return self.body is not None and self.body.skipped(exc[1])
>>> def f():
...     with Later() as later:
...         x = 40 + 2
...     return "x" in locals(), later.body
>>> ran, body = f()
>>> ran, body.run({}), body.assigned                # the block did not run in place; it runs when asked
(False, {'x': 42}, ('x',))

NNsight runs the bodies of a trace's invokes together, interleaved at each module, so that they share one
forward; Python runs a ``with`` body at once, so the body's source is read (``linecache``, as tracebacks do:
files, notebooks and ``python -c`` alike where the source is known), compiled with its own file name and line
numbers (errors in it point at the user's lines), and skipped in place: a trace function raises a private
exception at the body's first line, and the ``with`` statement's ``__exit__`` swallows it. The trace
function is the thread's only while the block is entered; the one found (a debugger's, coverage's) is put back
in ``__exit__``.

:func:`defer_body` returns ``None`` — the caller then runs the block in place — where the body cannot be
moved faithfully: no source, a body on the ``with`` line, or statements whose meaning depends on the block
being in place (``return``, ``yield``, ``await``, ``break``/``continue`` of an outer loop, ``global``,
``nonlocal``, ``del`` of a name).
"""

from __future__ import annotations

import ast
import ctypes
import linecache
import sys
import types
from typing import Any

__all__ = ["Body", "defer_body", "write_back"]


class _Skip(Exception):
    """Raised at the first line of a deferred body; only its ``with`` statement's ``__exit__`` sees it."""


class Body:
    """A ``with`` body compiled on its own, with the names its frame had when the block was entered."""

    def __init__(self, code: types.CodeType, frame: types.FrameType, assigned: tuple[str, ...],
                 free: frozenset[str] = frozenset()) -> None:
        self.code = code
        self.assigned = assigned                  # the names the body binds, in the order they appear
        self.free = free                          # the names it reads and never binds itself
        self.module_level = frame.f_locals is frame.f_globals
        self.globals = frame.f_globals
        # the frame's names now (a loop's variable keeps this iteration's value for this body)
        self.snapshot = {} if self.module_level else dict(frame.f_locals)
        if self.module_level:
            self.snapshot = {k: frame.f_globals[k] for k in _read_names(code) if k in frame.f_globals}
        self.frame: types.FrameType | None = frame   # where the names it binds are written back, then dropped
        self._frame: types.FrameType | None = frame
        self._old_trace: Any = None
        self._old_local: Any = None

    def namespace(self) -> dict[str, Any]:
        """A fresh namespace to run the body in: the frame's globals and, over them, its names at entry."""
        ns = dict(self.globals)
        ns.update(self.snapshot)
        return ns

    def run(self, ns: dict[str, Any]) -> dict[str, Any]:
        """Run the body in ``ns``; return the names it bound."""
        exec(self.code, ns)
        return {k: ns[k] for k in self.assigned if k in ns}

    # -- skipping the block in place ------------------------------------------------------------------
    def arm(self) -> None:
        frame = self._frame
        self._old_trace, self._old_local = sys.gettrace(), frame.f_trace

        def at_line(fr: types.FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                raise _Skip
            return at_line

        sys.settrace(_quiet)             # line events reach frame.f_trace only while a trace function is set
        frame.f_trace = at_line

    def disarm(self) -> None:
        if self._frame is not None:
            sys.settrace(self._old_trace)
            self._frame.f_trace = self._old_local
            self._frame = None
            self._old_trace = self._old_local = None

    def skipped(self, exc: BaseException | None) -> bool:
        """Called by the ``with`` statement's ``__exit__``: put tracing back; whether ``exc`` is the skip."""
        self.disarm()
        return isinstance(exc, _Skip)


def _quiet(frame: types.FrameType, event: str, arg: Any) -> None:
    return None


def defer_body(frame: types.FrameType) -> Body | None:
    """Take the body of the ``with`` statement that ``frame`` is entering out of line (see the module's text);
    ``None`` where it cannot be moved faithfully."""
    node = _with_node(frame)
    if node is None or len(node.items) != 1 or node.body[0].lineno <= node.items[-1].context_expr.end_lineno:
        return None
    if not all(_movable(statement) for statement in node.body):
        return None
    assigned = tuple(dict.fromkeys(_stored_names(node.body)))
    try:
        code = compile(ast.Module(body=node.body, type_ignores=[]), frame.f_code.co_filename, "exec")
    except SyntaxError:
        return None
    loaded = {n.id for statement in node.body for n in ast.walk(statement)
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    body = Body(code, frame, assigned, frozenset(loaded - set(assigned)))
    body.arm()
    return body


def write_back(body: Body, values: dict[str, Any]) -> None:
    """Bind ``values`` in the frame that ran ``body``'s ``with`` statement (as if the body had run there)."""
    frame, body.frame = body.frame, None
    if body.module_level or frame is None:
        body.globals.update(values)
        return
    if sys.version_info >= (3, 13):
        for k, v in values.items():
            frame.f_locals[k] = v            # a write-through view of the frame's variables
        return
    frame.f_locals.update(values)
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))


# -- reading the source ------------------------------------------------------------------------------
_trees: dict[tuple[str, int], ast.Module] = {}


def _with_node(frame: types.FrameType) -> ast.With | None:
    filename = frame.f_code.co_filename
    lines = linecache.getlines(filename, frame.f_globals)
    if not lines:
        return None
    key = (filename, hash("".join(lines)))
    tree = _trees.get(key)
    if tree is None:
        try:
            tree = ast.parse("".join(lines))
        except SyntaxError:
            return None
        if len(_trees) > 64:
            _trees.clear()
        _trees[key] = tree
    line = frame.f_lineno
    found = [n for n in ast.walk(tree) if isinstance(n, ast.With)
             and n.lineno <= line <= n.items[-1].context_expr.end_lineno]
    if not found:
        return None
    best = max(n.lineno for n in found)
    innermost = [n for n in found if n.lineno == best]
    return innermost[0] if len(innermost) == 1 else None


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


def _movable(statement: ast.stmt) -> bool:
    visitor = _Refuse()
    visitor.visit(statement)
    return visitor.ok


def _stored_names(body: list[ast.stmt]) -> list[str]:
    """Names bound by the body in its own scope (not inside functions, classes or comprehensions it defines)."""
    names: list[str] = []

    class Stores(ast.NodeVisitor):
        def visit_Name(self, node: ast.Name) -> None:
            if isinstance(node.ctx, ast.Store):
                names.append(node.id)

        def visit_FunctionDef(self, node: ast.AST) -> None:
            names.append(node.name)            # the def binds its name here; its body is another scope

        visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

        def visit_Lambda(self, node: ast.AST) -> None:
            return None

        visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_Lambda

        def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
            names.extend((a.asname or a.name).split(".")[0] for a in node.names)

        visit_ImportFrom = visit_Import

        def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
            names.append(node.target.id)
            self.visit(node.value)

    for statement in body:
        Stores().visit(statement)
    return names


def _read_names(code: types.CodeType) -> set[str]:
    """Every name the compiled body (and the code nested in it) may look up."""
    found = set(code.co_names) | set(code.co_varnames)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _read_names(const)
    return found
