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

__all__ = ["called_in_with"]

_cache: dict[tuple[types.CodeType, int], bool] = {}
_offsets: dict[types.CodeType, list[dis.Instruction]] = {}


def _instructions(code: types.CodeType) -> list[dis.Instruction]:
    found = _offsets.get(code)
    if found is None:
        found = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
        _offsets[code] = found
    return found


def _next_is_with(code: types.CodeType, lasti: int) -> bool:
    instrs = _instructions(code)
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
    key = (frame.f_code, frame.f_lasti)
    hit = _cache.get(key)
    if hit is None:
        hit = _next_is_with(*key)
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[key] = hit
    return hit
