"""Where a model takes its inputs: one device, also for a model dispatched over several (accelerate).

>>> import torch
>>> from attrib.core.devices import input_device, is_dispatched
>>> net = torch.nn.Linear(2, 2)
>>> input_device(net)[0], is_dispatched(net)
(device(type='cpu'), False)

A model placed by accelerate — Hugging Face's ``from_pretrained(device_map=...)``, ``accelerate.dispatch_model``
with a manual map, ``cpu_offload`` / ``disk_offload`` — carries an ``AlignDevicesHook`` on its root and on every
module with weights: each hook moves its module's inputs to the hook's ``execution_device`` (and loads
offloaded weights there, from the CPU or the disk, for the length of the call), and the root's hook sends
the output back to the device the inputs came on. Such a model's *input device* is the execution device of
the module that takes the inputs: the input embedding (``get_input_embeddings()``) when the model has one,
else the root's (``cpu_offload``'s root hook names none: then the first module's hook that does). Its parameters may sit anywhere, on the meta device too (offloaded weights), so the first
parameter's device says nothing; for any other model it is the first parameter's device, as in torch.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from .walk import buffers, memoized, modules, parameters

__all__ = ["hook_device", "is_dispatched", "input_device", "input_module", "live", "functional_call", "moved",
           "compute_devices"]


def hook_device(module: torch.nn.Module) -> torch.device | None:
    """The ``execution_device`` of accelerate's hook on ``module`` (its own, not an ancestor's), else None."""
    hook = module.__dict__.get("_hf_hook")
    if hook is None:
        return None
    for h in getattr(hook, "hooks", None) or (hook,):         # a SequentialHook holds several
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, torch.device) else device
    return None


def is_dispatched(module: torch.nn.Module) -> bool:
    """Whether accelerate placed ``module``: a hook on its root moves inputs and sends the output back."""
    return "_hf_hook" in module.__dict__


def input_module(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module that takes a Hugging Face model's token ids (its input embedding), else None."""
    getter = getattr(module, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        found = getter()
    except (AttributeError, NotImplementedError):
        return None
    return found if isinstance(found, torch.nn.Module) else None


def input_device(module: torch.nn.Module) -> tuple[torch.device, torch.nn.Module, Any]:
    """(the device inputs go to, the module that says so, its hook or None): for a dispatched model the execution
    device of its input embedding (else of its root); for any other the first parameter's (``cpu`` without any)."""
    if is_dispatched(module):
        first = input_module(module)
        for m in itertools.chain((first,) if first is not None else (), (module,), module.modules()):
            device = hook_device(m)           # cpu_offload's root hook names none: the first that does
            if device is not None:
                return device, m, m.__dict__["_hf_hook"]
    for m in module.modules():
        for p in m._parameters.values():
            if p is not None:
                return p.device, m, None
    return torch.device("cpu"), module, None


def live(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    """``module``'s own parameter (or buffer) ``name`` with its values, else None: an offloaded one, left on the
    meta device between calls by accelerate's hook, is read from the hook's weights map onto the hook's execution
    device."""
    value = module._parameters.get(name, module._buffers.get(name))
    if value is None or value.device.type != "meta":
        return value
    hook = module.__dict__.get("_hf_hook")
    for h in getattr(hook, "hooks", None) or ((hook,) if hook is not None else ()):
        weights = getattr(h, "weights_map", None)
        if weights is not None and name in weights:
            return weights[name].to(device=hook_device(module), dtype=value.dtype)
    return value


def functional_call(module: torch.nn.Module, params: dict[str, torch.Tensor], args: tuple) -> Any:
    """``module(*args)`` with ``params`` in place of those parameters (``torch.func.functional_call``), also on a
    module placed by accelerate: its hook is skipped for the call (it would load the offloaded weights over
    ``params``), and the arguments go to the device of ``params``."""
    hook = module.__dict__.get("_hf_hook")
    original = module.__dict__.get("_old_forward")
    if hook is None or original is None or not params:
        return torch.func.functional_call(module, params, args, strict=False)
    forward = module.__dict__.get("forward")
    module.__dict__["forward"] = original
    try:
        return torch.func.functional_call(module, params, moved(args, next(iter(params.values())).device),
                                          strict=False)
    finally:
        if forward is None:
            module.__dict__.pop("forward", None)
        else:
            module.__dict__["forward"] = forward


def moved(value: Any, device: torch.device, _depth: int = 0) -> Any:
    """``value`` with every tensor in it (in tuples, lists and dicts, nested) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if _depth > 6:
        return value
    if isinstance(value, dict):
        return {k: moved(v, device, _depth + 1) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(moved(v, device, _depth + 1) for v in value) if type(value) in (tuple, list) else value
    return value


def compute_devices(module: torch.nn.Module) -> list[torch.device]:
    """Every device ``module`` computes on: its parameters' and buffers' devices, and for a dispatched model the
    execution devices of accelerate's hooks (offloaded weights sit on ``meta`` between calls: never listed).
    Read once per public call (:func:`attrib.core.walk.remembered`)."""
    return list(memoized("devices", module, _compute_devices))


def _compute_devices(module: torch.nn.Module) -> tuple[torch.device, ...]:
    found: dict[str, torch.device] = {}
    if not any("_hf_hook" in m.__dict__ for m in modules(module)):       # no accelerate hooks: the tensors
        for t in itertools.chain(parameters(module), buffers(module)):
            if t.device.type != "meta":
                found.setdefault(str(t.device), t.device)
        return tuple(found.values())
    for m in modules(module):
        device = hook_device(m)
        if device is not None:
            device = _indexed(device)
            found.setdefault(str(device), device)
            continue
        for t in itertools.chain(m._parameters.values(), m._buffers.values()):
            if t is not None and t.device.type != "meta":
                found.setdefault(str(t.device), t.device)
    return tuple(found.values())


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` as the card it means (``cuda:N``, the current one), so that one card is not listed twice."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device
