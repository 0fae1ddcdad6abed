"""The one error family of attrib.

Every error the library raises on purpose is an :class:`AttribError`. Subclasses that
also stand for a Python or torch category inherit from that category too, so that code
written for plain PyTorch (``except RuntimeError``, ``except AttributeError``) keeps working.
"""

from __future__ import annotations

__all__ = [
    "AttribError",
    "OutOfOrderError",
    "ModulePathError",
    "GradientValueError",
    "GraphFreedError",
    "InputError",
]


class AttribError(Exception):
    """Base class of every error attrib raises: one sentence on what, where, and what to do."""


class OutOfOrderError(AttribError):
    """A value was asked for after the model (or the backward pass) had already run past it,
    or for a module / tensor that never gets a value in this pass."""


class ModulePathError(AttribError, AttributeError):
    """A module path that does not exist in the wrapped model."""


class GradientValueError(AttribError, ValueError):
    """A gradient was assigned with the wrong shape, dtype or device."""


class GraphFreedError(AttribError, RuntimeError):
    """A backward pass went through parts of the graph that an earlier backward freed."""


class InputError(AttribError, ValueError):
    """Inputs that the model cannot be traced with (empty prompt, wrong device, no tokenizer...)."""
