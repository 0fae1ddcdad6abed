"""Tell whether a call is the context expression of a ``with`` statement, from the caller's bytecode.

>>> import sys
>>> from attrib.core.withdetect import called_in_with
>>> class C:
...     def __enter__(self): return self
...     def __exit__(self, *a): return False
>>> def probe(): return called_in_with(sys._getframe(1))
>>> probe()
False
>>> with C() if probe() else C(): pass

The instruction that follows the call is ``BEFORE_WITH`` on Python 3.11-3.13 and
``COPY 1; LOAD_SPECIAL`` on 3.14. Unlike reading source files, this works for code run by
``exec`` and ``python -c``. ``ctx = x.backward(); with ctx:`` is a plain call, but when both lines are in
the same code object :func:`entered_later` finds the name the result is stored in being entered by a later
``with`` statement.

>>> from attrib.core.withdetect import entered_later
>>> def probe(): return entered_later(sys._getframe(1))
>>> def later():
...     ctx = probe()
...     with C() if ctx is None else C(): pass
...     with ctx or C(): pass
...     return ctx
>>> later()
>>> def entered():
...     ctx = probe()
...     if ctx == "ctx":
...         return "found"
...     with ctx: pass
>>> entered()
'found'
"""

from __future__ import annotations

import dis
import types
import weakref

__all__ = ["called_in_with", "entered_later"]

# per code object (held weakly: a code object that goes away takes its entries with it), per offset
_hits: "weakref.WeakKeyDictionary[types.CodeType, dict[int, bool]]" = weakref.WeakKeyDictionary()
_stored: "weakref.WeakKeyDictionary[types.CodeType, dict[int, str | None]]" = weakref.WeakKeyDictionary()


def _next_is_with(code: types.CodeType, lasti: int) -> bool:
    instrs = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    for k, ins in enumerate(instrs):
        if ins.offset > lasti:
            if ins.opname == "BEFORE_WITH":
                return True
            if ins.opname == "COPY" and ins.arg == 1 and k + 1 < len(instrs):
                return instrs[k + 1].opname == "LOAD_SPECIAL"
            return False
    return False


def called_in_with(frame: types.FrameType) -> bool:
    """True when ``frame`` is executing the call that a ``with`` statement is about to enter."""
    code, lasti = frame.f_code, frame.f_lasti
    seen = _hits.get(code)
    if seen is None:
        seen = _hits[code] = {}
    hit = seen.get(lasti)
    if hit is None:
        hit = seen[lasti] = _next_is_with(code, lasti)
    return hit


def _opens_with(instrs: list[dis.Instruction], k: int) -> bool:
    """Whether the instruction after index ``k`` starts entering a ``with`` on the value just loaded."""
    nxt = instrs[k + 1] if k + 1 < len(instrs) else None
    if nxt is None:
        return False
    if nxt.opname == "BEFORE_WITH":
        return True
    return (nxt.opname == "COPY" and nxt.arg == 1 and k + 2 < len(instrs)
            and instrs[k + 2].opname == "LOAD_SPECIAL")


def _stored_name_entered(code: types.CodeType, lasti: int) -> str | None:
    instrs = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    after = [k for k, ins in enumerate(instrs) if ins.offset > lasti]
    if not after or not instrs[after[0]].opname.startswith("STORE_"):
        return None
    name = instrs[after[0]].argval
    for k in after[1:]:
        ins = instrs[k]
        if ins.opname.startswith("LOAD_") and ins.argval == name and _opens_with(instrs, k):
            return name
    return None


def entered_later(frame: types.FrameType) -> str | None:
    """The variable name, when ``frame`` is executing a call whose result is stored in a variable that a later
    ``with`` statement of the same code enters directly (``ctx = x.backward()`` ... ``with ctx:``)."""
    code, lasti = frame.f_code, frame.f_lasti
    seen = _stored.get(code)
    if seen is None:
        seen = _stored[code] = {}
    if lasti not in seen:
        seen[lasti] = _stored_name_entered(code, lasti)
    return seen[lasti]
