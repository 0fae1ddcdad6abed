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
``exec`` and ``python -c``. ``ctx = x.backward(); with ctx:`` is a plain call: it cannot be told apart.
"""

from __future__ import annotations

import dis
import types
import weakref

__all__ = ["called_in_with"]

# per code object (held weakly: a code object that goes away takes its entries with it), per offset
_hits: "weakref.WeakKeyDictionary[types.CodeType, dict[int, bool]]" = weakref.WeakKeyDictionary()


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
