"""``attrib.save``: keep any value after a trace."""

from __future__ import annotations

from typing import TypeVar

from .patch import current_trace

T = TypeVar("T")

__all__ = ["save"]


def save(obj: T) -> T:
    """Mark ``obj`` (a tensor, tuple, ModelOutput, anything) as kept after the trace; returns it.

    >>> import attrib
    >>> attrib.save({"a": 1})
    {'a': 1}

    Values in a trace are real objects, so saving only records them in ``trace.saved``;
    ``tensor.save()`` does the same for tensors.
    """
    trace = current_trace()
    if trace is not None:
        trace.saved.append(obj)
    return obj
