"""Every error attrib raises, one class per cause, all subclasses of :class:`AttribError`.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)))
>>> try:
...     with net.trace(torch.ones(1, 2)):
...         _ = net[1].output
...         net[0].output
... except attrib.OutOfOrderError as err:
...     print(type(err).__name__, "|", err)
OutOfOrderError | model[0].output was read after the model ran past it (it was at model[1]); read module values in the order the model computes them.

Each message says what was wrong, where (the module path, the argument, the user's value), and what to do
instead. Classes that also stand for a Python or torch category inherit from it too, so that code written
for plain PyTorch (``except RuntimeError``, ``except AttributeError``, ``except ValueError``) keeps working.
The three ways a value or gradient is not there are subclasses of :class:`OutOfOrderError` (the category the
contract names): :class:`NeverRanError`, :class:`NotOnPathError` and :class:`NotInTraceError`.
"""

from __future__ import annotations

__all__ = [
    "AttribError",
    # tracing
    "InputError", "ModulePathError", "ReadOnlyEnvoyError", "AlreadyTracedError", "OutOfOrderError",
    "NeverRanError", "NotInTraceError", "TraceFailedError", "ReusedBlockError", "ValueEditError",
    # gradients
    "NotOnPathError", "NestedBackwardError", "GradientValueError", "GraphFreedError", "NoGradError",
    "NonScalarLossError", "PendingGradError", "PlainBackwardError",
    # models
    "DemoModelError", "LayoutError", "CompiledModuleError",
    # methods and results
    "MethodError", "TargetError", "NonFiniteAttributionError", "ResultFileError", "RuleError", "RunError",
    # drawing
    "PlotError", "OptionError",
    # warnings
    "AttribWarning", "TrainModeWarning", "ConvergenceWarning",
]


class AttribError(Exception):
    """Base class of every error attrib raises: one sentence on what, where, and what to do."""


# -- tracing ------------------------------------------------------------------------------------------
class InputError(AttribError, ValueError):
    """Inputs that the model cannot be traced with (empty prompt, wrong device, no tokenizer, ids outside the
    vocabulary...)."""


class ModulePathError(AttribError, AttributeError):
    """A module path that does not exist in the wrapped model."""


class ReadOnlyEnvoyError(AttribError, AttributeError):
    """An attribute other than ``.output`` / ``.input`` / ``.inputs`` was assigned on an envoy."""


class AlreadyTracedError(AttribError, RuntimeError):
    """A trace was opened on a model that this thread is already tracing."""


class OutOfOrderError(AttribError):
    """A module value was read after the model had run past it, or a gradient after the backward had
    computed it."""


class NeverRanError(OutOfOrderError):
    """A module value was read, but that module does not run in this forward pass."""


class NotInTraceError(OutOfOrderError):
    """A module value was read outside ``with model.trace(...)`` (or first inside a backward context, once
    the forward is over)."""


class TraceFailedError(AttribError, RuntimeError):
    """The traced forward (or a backward) already raised; there is nothing left to resume."""


class ReusedBlockError(AttribError, RuntimeError):
    """A trace or backward context object was entered by a second ``with`` block; each runs one pass."""


class ValueEditError(AttribError, ValueError):
    """A module value was assigned a tensor of another shape, dtype or device than the value it replaces."""


# -- gradients ----------------------------------------------------------------------------------------
class NotOnPathError(OutOfOrderError):
    """A gradient was read of a tensor that gets none from this backward (not on the loss's path,
    detached, or not reached by the pruned backward)."""


class NestedBackwardError(AttribError, RuntimeError):
    """A backward context was opened inside another one."""


class GradientValueError(AttribError, ValueError):
    """A gradient was assigned with the wrong shape, dtype or device."""


class GraphFreedError(AttribError, RuntimeError):
    """A backward pass went through parts of the graph that an earlier backward freed."""


class NoGradError(AttribError, RuntimeError):
    """``backward()`` of a tensor that is not part of an autograd graph, or a promised gradient that no
    backward filled."""


class NonScalarLossError(AttribError, RuntimeError):
    """``backward()`` of a non-scalar tensor without a gradient argument."""


class PendingGradError(AttribError, RuntimeError):
    """A gradient read before its backward pass was used before that backward ran."""


class PlainBackwardError(AttribError, TypeError):
    """A ``with`` statement was given what an earlier ``loss.backward()`` call returned: that call already ran
    a plain backward; only ``with loss.backward():`` itself opens a backward context."""


# -- models -------------------------------------------------------------------------------------------
class CompiledModuleError(AttribError, RuntimeError):
    """A submodule compiled with ``torch.compile`` was traced: compiled code cannot pause mid-forward."""


class DemoModelError(AttribError):
    """The demo model's weights or tokenizer cannot be found or read."""


class LayoutError(AttribError, ValueError):
    """A site name or layout that does not fit the model (unknown family, unknown site, missing module)."""


# -- methods and results ------------------------------------------------------------------------------
class MethodError(AttribError, ValueError):
    """An argument of an attribution method that cannot be used (method name, steps, layer, baseline...)."""


class RuleError(AttribError, ValueError):
    """A rule that cannot be installed where it was asked for, or whose backward returned a gradient of the
    wrong shape, or whose module's input or output was changed in place before the rule could read it."""


class TargetError(AttribError, ValueError):
    """A target, contrast, score or metric that cannot be used."""


class NonFiniteAttributionError(AttribError, FloatingPointError):
    """Attributions came out inf or NaN."""


class ResultFileError(AttribError, ValueError):
    """A result file that cannot be written or read back (a path that is no path, a missing folder or file, a
    malformed header, another kind of result, a newer format)."""


class RunError(AttribError, ValueError):
    """A dataset run (``attrib run`` / ``attrib.run_dataset``) that cannot start, resume or be reported."""


# -- drawing ------------------------------------------------------------------------------------------
class PlotError(AttribError, ValueError):
    """Values and labels that do not fit together in a heatmap."""


class OptionError(AttribError, ValueError, TypeError):
    """A heatmap option of the wrong type or value, or an unknown option name."""


# -- warnings -----------------------------------------------------------------------------------------
class AttribWarning(UserWarning):
    """Base of attrib's warnings: a result that is computed, but that the user should know is unusual."""


class TrainModeWarning(AttribWarning):
    """A method ran on a model in train mode: dropout makes each forward random, so two identical calls
    give different attributions. attrib leaves the mode to the user (``model.module.eval()``)."""


class ConvergenceWarning(AttribWarning):
    """Integrated gradients with ``n_steps="auto"`` used its budget of evaluations before reaching ``tol``."""
