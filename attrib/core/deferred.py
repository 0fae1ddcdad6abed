"""The body of a ``with`` block, taken out to run later: how invokes of one trace run as one batch.

>>> import contextlib, sys
>>> from attrib.core.deferred import defer_body
>>> class Later:                                  # what an invoke does with its block
...     def __enter__(self):
...         Later.body = defer_body(sys._getframe(1))
...     def __exit__(self, *exc):
...         return Later.body is not None and Later.body.skipped(exc[1])
>>> class Model:
...     def trace(self):
...         return contextlib.nullcontext()
...     def invoke(self):
...         return Later()
>>> def f(model):
...     with model.trace():
...         with model.invoke():
...             x = 40 + 2
...     return "x" in locals()
>>> f(Model()), Later.body.run({}), Later.body.assigned     # the block did not run in place; it runs when asked
(False, {'x': 42}, ('x',))

NNsight runs the bodies of a trace's invokes together, interleaved at each module, so that they share one
forward; Python runs a ``with`` body at once, so the body's source is read (``linecache``, as tracebacks do:
files, notebooks and ``python -c`` alike where the source is known), compiled with its own file name and line
numbers (errors in it point at the user's lines), and skipped in place: a trace function raises a private
exception at the body's first line, and the ``with`` statement's ``__exit__`` swallows it. The trace
function is the thread's only while the block is entered; the one found (a debugger's, coverage's) is put back
in ``__exit__``.

:func:`defer_body` returns ``None`` — the caller then runs the block in place — where the body cannot be
moved faithfully: no source, or what :func:`attrib.core.bodyscan.scan` finds.
"""

from __future__ import annotations

import ast
import ctypes
import linecache
import sys
import types
from typing import Any

from .bodyscan import Scan, scan

__all__ = ["Body", "defer_body", "write_back"]


class Body:
    """A ``with`` body compiled on its own, with the names its frame had when the block was entered."""

    def __init__(self, code: types.CodeType, frame: types.FrameType, facts: Scan) -> None:
        self.code = code
        self.facts = facts
        self.assigned = facts.assigned            # the names the body binds, in the order they appear
        self.module_level = frame.f_locals is frame.f_globals
        self.globals = frame.f_globals
        # the frame's names now (a loop's variable keeps this iteration's value for this body)
        self.snapshot = {} if self.module_level else dict(frame.f_locals)
        if self.module_level:
            self.snapshot = {k: frame.f_globals[k] for k in _read_names(code) if k in frame.f_globals}
        self.frame: types.FrameType | None = frame   # where the names it binds are written back, then dropped
        self._frame: types.FrameType | None = frame
        # raised at the body's first line, inside the ``with``: only its ``__exit__`` sees it (by identity)
        self._token = RuntimeError("attrib: the body of an invoke, skipped here to run with the others")
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

        token = self._token

        def at_line(fr: types.FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                raise token
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
        if exc is self._token:
            exc.__traceback__ = None
            return True
        return False


def _quiet(frame: types.FrameType, event: str, arg: Any) -> None:
    return None


def defer_body(frame: types.FrameType) -> Body | None:
    """Take the body of the ``with`` statement that ``frame`` is entering out of line (see the module's text);
    ``None`` where it cannot be moved faithfully (:func:`attrib.core.bodyscan.scan`)."""
    found = _with_node(frame)
    if found is None:
        return None
    tree, node = found
    facts = scan(tree, node)
    if facts is None:
        return None
    try:
        code = compile(ast.Module(body=node.body, type_ignores=[]), frame.f_code.co_filename, "exec")
    except SyntaxError:
        return None
    body = Body(code, frame, facts)
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


def _with_node(frame: types.FrameType) -> tuple[ast.Module, ast.With] | None:
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
    return (tree, innermost[0]) if len(innermost) == 1 else None


def _read_names(code: types.CodeType) -> set[str]:
    """Every name the compiled body (and the code nested in it) may look up."""
    found = set(code.co_names) | set(code.co_varnames)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found |= _read_names(const)
    return found
