"""``attrib.save``: keep any value after a trace."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")

__all__ = ["save"]


def save(obj: T) -> T:
    """Keep ``obj`` (a tensor, tuple, ModelOutput, anything) after the trace; returns it.

    >>> import attrib
    >>> attrib.save({"a": 1})
    {'a': 1}

    Values in a trace are real objects, so there is nothing to copy: ``attrib.save(x)`` and ``tensor.save()``
    return their argument, and exist so that NNsight-style code runs unchanged.
    """
    return obj
