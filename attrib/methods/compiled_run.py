"""How a compiled pass runs, for every compiled method (:mod:`attrib.methods.compiled`'s gradient passes and
:mod:`attrib.methods.compiled_patching`'s patched forwards): the compiled functions, the mode and scope of a pass,
dynamo's recompile limits, the rule for the rows after the planner's measured passes, and the buckets that ran.

>>> import torch
>>> from attrib.methods.compiled_run import Rest, pass_mode
>>> pass_mode(None, torch.device("cpu"), 52, 64)
'default'
>>> rest = Rest(total=52)                       # one prompt's 52 rows
>>> rest.eager(None), rest.ran(8), rest.eager(None), rest.ran(16), rest.eager(4000)    # measured 8 + 16, 28 left
(True, None, True, None, True)
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable

import torch

from ..core.devices import compute_devices
from ..errors import LayoutError, MethodError
from ..models.layouts import layout_of
from .planning import Planner, Remember

__all__ = ["GRAPHED", "RECOMPILE_LIMIT", "pass_mode", "compiled_buckets", "record_bucket", "recompile_limits",
           "compiled_call", "resolve_scope", "run_compiled", "Rest", "planned_rows"]

GRAPHED = 32_768  # row-tokens below which a CUDA pass replays CUDA graphs (H200: 52 x 64 rows 27-33 ms against 47;
                  # 4,352 x 32: 487 prompts/s against 530 without, whose static-buffer copies cost more than launches)
RECOMPILE_LIMIT = 256        # compiled shapes kept per code object while attrib's passes run (torch's default: 8)


def pass_mode(mode: str | None, device: torch.device, rows: int, tokens: int) -> str:
    """The compile mode of a pass of ``rows`` × ``tokens`` on ``device`` (``mode``, the caller's, if given).

    >>> cuda = torch.device("cuda")
    >>> pass_mode(None, cuda, 52, 64), pass_mode(None, cuda, 4352, 32), pass_mode("max-autotune", cuda, 1, 1)
    ('reduce-overhead', 'default', 'max-autotune')
    """
    if mode is not None:
        return mode
    return "reduce-overhead" if device.type == "cuda" and rows * tokens < GRAPHED else "default"


# Which buckets ran compiled, per model (what later calls find warm): (scope, mode, rows, tokens, masked).
_warm: "weakref.WeakKeyDictionary[torch.nn.Module, set[tuple]]" = weakref.WeakKeyDictionary()
_compiled: dict[tuple[str, str], Callable[..., Any]] = {}        # (scope, mode) -> compiled function


def compiled_buckets(module: torch.nn.Module) -> list[tuple]:
    """The buckets that ran compiled on ``module`` in this process: (scope, mode, rows, tokens, masked) for IG's
    and saliency's passes, (scope, mode, rows, tokens, "patching") for activation patching's."""
    return sorted(_warm.get(module, ()), key=repr)


def record_bucket(module: torch.nn.Module, bucket: tuple) -> None:
    """Note that ``bucket`` (scope, mode, rows, tokens, masked) ran compiled on ``module``."""
    _warm.setdefault(module, set()).add(bucket)


def _call_layer(layer: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    return layer._call_impl(*args, **kwargs)


def _call_model(module: torch.nn.Module, kwargs: dict[str, Any]) -> Any:
    return module(**kwargs)


def _compile(scope: str, mode: str) -> Callable[..., Any]:
    """One compiled function per scope and mode for the process: torch keeps its graphs per shape and guards."""
    key = (scope, mode)
    if key not in _compiled:
        fn = _call_layer if scope == "layers" else _call_model
        _compiled[key] = torch.compile(fn, dynamic=False, mode=None if mode == "default" else mode)
    return _compiled[key]


def recompile_limits() -> Any:
    """Dynamo's recompile limits raised to ``RECOMPILE_LIMIT`` for a block (its default of 8 graphs per code
    object would send a ninth bucket back to eager, silently)."""
    return torch._dynamo.config.patch(
        recompile_limit=max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT),
        accumulated_recompile_limit=max(torch._dynamo.config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT))


def compiled_call(hf: torch.nn.Module, call: dict[str, Any], mode: str, scope: str,
                  layers: list[torch.nn.Module]) -> Any:
    """``hf(**call)`` with the whole model (``scope="model"``) or each of ``layers`` compiled in ``mode``."""
    fn = _compile(scope, mode)
    if scope == "model":
        return fn(hf, call)
    saved = [(layer, layer.__dict__.get("_compiled_call_impl")) for layer in layers]
    try:
        for layer, _ in saved:
            layer._compiled_call_impl = functools.partial(fn, layer)
        return hf(**call)
    finally:
        for layer, before in saved:
            if before is None:
                layer.__dict__.pop("_compiled_call_impl", None)
            else:
                layer._compiled_call_impl = before


def resolve_scope(hf: torch.nn.Module, scope: str) -> tuple[str, list[torch.nn.Module]]:
    """(``"layers"``, the decoder layers) where ``scope`` is ``"auto"`` or ``"layers"`` and the layout registry
    knows the model, ``"model"`` for ``"auto"`` where it does not (``"layers"``: its LayoutError), else
    (``scope``, [])."""
    if scope not in ("auto", "layers"):
        return scope, []
    try:
        return "layers", list(hf.get_submodule(layout_of(hf).layers))
    except LayoutError:
        if scope == "layers":
            raise
        return "model", []


def run_compiled(hf: torch.nn.Module, call: dict[str, Any], mode: str, scope: str,
                 layers: list[torch.nn.Module]) -> Any:
    """:func:`compiled_call`, a failed compile as one :class:`~attrib.MethodError` that says what to pass instead."""
    try:
        return compiled_call(hf, call, mode, scope, layers)
    except torch._dynamo.exc.BackendCompilerFailed as err:
        inner = getattr(err, "inner_exception", None) or err
        why = (str(inner).strip().splitlines() or [""])[0][:160]
        raise MethodError(f"torch.compile (mode {mode!r}, scope {scope!r}) failed on {type(hf).__name__} "
                          f"({type(inner).__name__}: {why}); pass compile=False, or other "
                          "CompileOptions(mode=..., scope=...).") from err


class Rest:
    """Whether a call's passes run eagerly after the planner's measured ones: the planner's measured passes
    (``planned`` None) always do; in a call that measured, the rows left when it settles run eagerly if they are
    fewer than a planned pass — their shape is this call's alone (one prompt's 52 rows ran as 8 + 16 measured
    and 28 compiled: a whole-model compile of ~45 s for a shape never seen again) — and compiled otherwise
    (8,680 rows left of 8,704 run as the planned passes a later call runs too). Decided once per call."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.measured = total, 0, False
        self.decided: bool | None = None

    def eager(self, planned: int | None) -> bool:
        """Whether this pass runs eagerly (``planned``: the planner's rows per pass, None while it measures)."""
        if planned is None:
            self.measured = True
            return True
        if self.decided is None:
            self.decided = self.measured and self.total - self.done < planned
        return self.decided

    def ran(self, rows: int) -> None:
        """A pass of ``rows`` rows finished (one that failed, and is retried smaller, is not counted)."""
        self.done += rows


def planned_rows(batch_size: int | None, rows: int, device: torch.device, remember: Remember) -> int | None:
    """Rows per pass: the caller's ``batch_size``, else the size the planner settled on for ``remember``'s work
    (None while it still measures)."""
    if batch_size is not None:
        return batch_size
    planner = Planner(rows, None, device, remember, compute_devices(remember[0]))
    return planner.size if planner.settled else None
