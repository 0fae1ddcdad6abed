"""Readable token labels: whitespace made visible, text made safe for matplotlib, long prompts cut into rows.

>>> from attrib.viz.labels import token_label, chunks
>>> token_label(" cat"), token_label("\\n"), token_label("\\tx "), token_label("")
('␣cat', '⏎', '⇥x␣', '∅')
>>> [list(r) for r in chunks(5, 2)]
[[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import operator
from typing import Any, Sequence

from ..errors import PlotError

__all__ = ["SPACE", "NEWLINE", "TAB", "EMPTY", "MARKERS", "token_label", "mpl_text", "chunks", "position_labels",
           "position_index", "number", "quoted"]


def quoted(target: str) -> str:
    """A result's target as titles show it: ``' Paris'``; a contrast (already quoted) as it is.

    >>> quoted(" Paris"), quoted("' Mary' − ' John'")
    ("' Paris'", "' Mary' − ' John'")
    """
    return target if target.startswith(("'", '"')) and " − " in target else repr(target)


SPACE, NEWLINE, TAB, EMPTY = "␣", "⏎", "⇥", "∅"
MARKERS = (SPACE, NEWLINE, TAB, EMPTY)
_VISIBLE = {"\n": NEWLINE, "\t": TAB, "\r": "\\r"}


def token_label(token: str) -> str:
    """``token`` with its leading and trailing spaces as ␣, newlines as ⏎, tabs as ⇥ and other control
    characters as escapes; an empty token is ∅. Inner spaces stay spaces.

    >>> token_label("  a b\\x00")
    '␣␣a b\\\\x00'
    """
    if token == "":
        return EMPTY
    body = token.strip(" ")
    if body == "":
        return SPACE * len(token)
    lead = len(token) - len(token.lstrip(" "))
    trail = len(token) - len(token.rstrip(" "))
    shown = "".join(_VISIBLE.get(c, f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c) for c in body)
    return SPACE * lead + shown + SPACE * trail


def mpl_text(text: str) -> str:
    """``text`` escaped so that matplotlib draws it literally: a ``$`` never starts mathtext.

    >>> mpl_text("$x$ costs $5")
    '\\\\$x\\\\$ costs \\\\$5'
    """
    return text.replace("$", "\\$")


def chunks(n: int, width: int) -> list[range]:
    """Consecutive ranges of at most ``width`` indices covering ``range(n)`` (one empty range for n = 0)."""
    if n == 0:
        return [range(0)]
    return [range(start, min(n, start + width)) for start in range(0, n, width)]


def position_index(position: Any, n: int, name: str = "position") -> int:
    """A prompt position (negative counts from the end) as an index into ``range(n)``; anything else, a
    position past either end included, is one clear :class:`~attrib.PlotError` (never wrapped around).

    >>> position_index(-1, 11), position_index(3, 11)
    (10, 3)
    """
    try:
        if isinstance(position, bool):
            raise TypeError
        p = operator.index(position)
    except TypeError:
        raise PlotError(f"{name} must be an int (a prompt position, negative from the end), got {position!r:.40}; "
                        "pass e.g. -1 for the last token.") from None
    if not -n <= p < n:
        raise PlotError(f"{name}={p} is outside the prompt of {n} tokens; pass a position from {-n} to {n - 1} "
                        "(negative counts from the end).")
    return p % n


def position_labels(tokens: Sequence[str], positions: Sequence[int] | None = None) -> list[str]:
    """Tick labels of a position axis: token labels, prefixed by the position when ``positions`` is a subset.

    >>> position_labels(["a", " b", "c"], [0, 2])
    ['0:a', '2:c']
    """
    if positions is None:
        return [token_label(t) for t in tokens]
    positions = [position_index(p, len(tokens), "positions") for p in positions]
    if list(positions) == list(range(len(tokens))):
        return [token_label(tokens[p]) for p in positions]
    return [f"{p}:{token_label(tokens[p])}" for p in positions]


def number(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` digits after the point, never as ``-0.00``.

    >>> number(-0.001, 2), number(1.5, 1), number(float("nan"), 2)
    ('0.00', '1.5', 'nan')
    """
    text = f"{float(value):.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text
