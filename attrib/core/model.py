"""The model wrapper: :class:`Model` for any ``nn.Module`` (``attrib.LanguageModel`` adds a tokenizer).

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(3, 1))
>>> with net.trace(torch.ones(2, 3)):
...     y = net.output.save()
>>> tuple(y.shape)
(2, 1)

The wrapper is not a copy: the module's own weights, device and dtype are used. A model compiled with
``torch.compile`` is wrapped through its original module: traces run it eagerly (compiled code cannot pause
mid-forward), while calls of the compiled object stay compiled.
"""

from __future__ import annotations

from typing import Any

import torch

from .devices import input_device, moved
from .envoy import Envoy, display_path
from ..errors import InputError, NotInTraceError
from .release import release
from .current import trace_of
from .invoke import Invoker
from .trace import Trace
from .values import tensors_in

__all__ = ["Model"]


class Model:
    """Wrap any ``nn.Module`` so that its module values and gradients can be traced.

    ``model.trace(*args, **kwargs)`` calls the module with those arguments. Attribute access
    mirrors the module tree (``model.encoder.layers[-1]``); see :class:`~attrib.core.envoy.Envoy`.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        if not isinstance(module, torch.nn.Module):
            raise InputError(f"attrib.Model wraps a torch.nn.Module, got {type(module).__name__}.")
        original = getattr(module, "_orig_mod", None)       # torch.compile(module): trace the module it compiled
        if isinstance(original, torch.nn.Module) and type(module).__name__ == "OptimizedModule":
            module = original
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_root", Envoy(module, "", self))
        object.__setattr__(self, "_names", None)
        object.__setattr__(self, "_value_error", None)
        object.__setattr__(self, "_order", None)  # module event order learnt by the first trace
        object.__setattr__(self, "_container_list", None)
        object.__setattr__(self, "_invokers", [])  # open `with model.trace() as tracer:` blocks (no inputs)

    # -- module tree --------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The wrapped module."""
        return self._module

    @property
    def device(self) -> torch.device:
        """The device inputs go to (:mod:`attrib.core.devices`): the first parameter's, or for a model dispatched
        over several devices by accelerate (``device_map=...``, ``dispatch_model``, offloading) the execution
        device of its input embedding. Methods compute their results there."""
        device, owner, hook = input_device(self._module)
        object.__setattr__(self, "_device_source", (owner, hook, device))
        return device

    def _quick_device(self) -> torch.device:
        """:attr:`device` from what found it last time (the first parameter's module, or the dispatch hook that
        names the input device): a dictionary lookup instead of a walk of the module tree. It can be stale once the
        tree is edited or dispatched, so a mismatch is checked again against :attr:`device` before it counts."""
        source = self.__dict__.get("_device_source")
        if source is not None:
            owner, hook, device = source
            if hook is None:
                for p in owner._parameters.values():
                    if p is not None:
                        return p.device
            elif owner.__dict__.get("_hf_hook") is hook:
                return device
        return self.device

    def _hooked(self) -> bool:
        """Whether the last :attr:`device` came from accelerate's hooks (a dispatched model)."""
        return self.__dict__["_device_source"][1] is not None

    @property
    def dtype(self) -> torch.dtype:
        for p in self._module.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def _dotted_of(self, module: torch.nn.Module) -> str:
        if self._names is None:
            object.__setattr__(self, "_names", {m: n for n, m in self._module.named_modules(remove_duplicate=False)})
        name = self._names.get(module)
        if name is None:  # the tree changed after wrapping: learn names and module order again
            object.__setattr__(self, "_names", {m: n for n, m in self._module.named_modules(remove_duplicate=False)})
            object.__setattr__(self, "_order", None)
            object.__setattr__(self, "_container_list", None)
            object.__setattr__(self, "_chains", None)
            name = self._names.get(module, f"<{type(module).__name__}>")
        return name

    def _chain(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        """The modules from the root down to ``module`` (cached; empty when ``module`` is not in the tree)."""
        chains = self.__dict__.get("_chains")
        if chains is None or self._names is None:
            chains = {}
            object.__setattr__(self, "_chains", chains)
        chain = chains.get(module)
        if chain is None:
            dotted = self._dotted_of(module)
            if self.__dict__["_chains"] is not chains:       # the names were learnt again: start a new cache
                return self._chain(module)
            m, chain = self._module, [self._module]
            for part in dotted.split(".") if dotted else ():
                m = m._modules.get(part)
                if m is None:
                    return []
                chain.append(m)
            chains[module] = chain
        return chain

    def _containers(self) -> list[torch.nn.Module]:
        """Modules with children (they may be running when their output is asked for), root first."""
        if self._names is None or self._container_list is None:
            self._dotted_of(self._module)
            seen = dict.fromkeys(m for m in self._names if m._modules)
            object.__setattr__(self, "_container_list", list(seen))
        return self._container_list

    def _path_of(self, module: torch.nn.Module) -> str:
        return display_path(self._dotted_of(module))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in ("output", "input", "inputs"):
            self._reraise_value_error(name)
        return getattr(self._root, name)

    def _read(self, envoy: Envoy, kind: str) -> Any:
        object.__setattr__(self, "_value_error", None)
        try:
            return self._active_trace(envoy, kind).read(envoy.module, kind)
        except AttributeError as err:
            object.__setattr__(self, "_value_error", err)
            raise

    def _forget_value_error(self) -> None:
        """Drop the kept AttributeError (its traceback holds the frames of the read that raised it)."""
        release(self._value_error)
        object.__setattr__(self, "_value_error", None)

    def _reraise_value_error(self, name: str) -> None:
        err = self._value_error
        if err is not None:
            raise err
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("output", "input", "inputs") or name.startswith("_"):
            object.__setattr__(self, name, value)     # the property setters (a value in the trace), or own state
            return
        setattr(self._root, name, value)              # the envoy's refusal, naming the module to change instead

    def __getitem__(self, index: Any) -> Any:
        return self._root[index]

    def __len__(self) -> int:
        return len(self._root)

    def __iter__(self):
        return iter(self._root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._module).__name__})"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._module._modules))

    # -- values in a trace --------------------------------------------------------------------
    output = property(lambda self: self._root.output, lambda self, v: setattr(self._root, "output", v),
                      doc="The root module's output in the current trace.")
    input = property(lambda self: self._root.input, lambda self, v: setattr(self._root, "input", v),
                     doc="The root module's first argument in the current trace.")
    inputs = property(lambda self: self._root.inputs, lambda self, v: setattr(self._root, "inputs", v),
                      doc="The root module's ``(args, kwargs)`` in the current trace.")

    def _active_trace(self, envoy: Envoy, kind: str) -> Trace:
        trace = trace_of(self)
        if trace is None and self._invokers:
            raise NotInTraceError(
                f"{envoy.path}.{kind} was read in `with model.trace() as tracer:` outside every invoke; a trace "
                "without inputs runs its forwards in its invokes, so read it inside `with tracer.invoke(...):`."
            )
        if trace is None:
            raise NotInTraceError(
                f"{envoy.path}.{kind} exists only inside `with model.trace(...):`; read it in the block "
                "(and .save() it to keep it afterwards)."
            )
        return trace

    # -- tracing ------------------------------------------------------------------------------
    def trace(self, *args: Any, param_grads: bool = False, **kwargs: Any) -> Trace | Invoker:
        """Open a trace that calls the wrapped module with ``*args, **kwargs``; without inputs, a block whose
        ``tracer.invoke(...)`` traces each input in turn (:mod:`attrib.core.invoke`).

        ``param_grads=True`` makes backward contexts also accumulate parameter gradients into
        ``.grad`` (by default they compute only what the values read in the trace need).
        """
        if not args and not kwargs:
            return Invoker(self, param_grads)
        args, kwargs = self._place(*self._prepare(args, kwargs))
        return Trace(self, args, kwargs, param_grads=param_grads)

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        for a in (*args, *kwargs.values()):
            if isinstance(a, str) or (isinstance(a, (list, tuple)) and a and all(isinstance(x, str) for x in a)):
                raise InputError(
                    f"a text prompt ({a!r:.60}) was given to attrib.Model({type(self._module).__name__}), which has "
                    "no tokenizer; wrap the model with attrib.LanguageModel(hf_model, tokenizer) or pass tensors."
                )
        if not args and not kwargs:
            raise InputError("model.trace() got no inputs; pass what the wrapped module's forward takes.")
        return args, kwargs

    def _place(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The inputs, on the model's input device: a dispatched model's are moved there (as its own root hook
        would move them); any other model's must already be there (a clear error, nothing moved silently)."""
        device = None
        for t in tensors_in((args, kwargs)):
            if device is None:
                device = self._quick_device()
                if device.type == "meta" and (device := self.device).type == "meta" and not self._hooked():
                    raise InputError(
                        f"the parameters of {type(self._module).__name__} are on the meta device, so they hold no "
                        "values to compute with; load its weights first (e.g. module.to_empty(device='cpu') and then "
                        "load_state_dict(...)), then trace it."
                    )
            if t.device != device and t.device != (device := self.device):
                if self._hooked():
                    return moved(args, device), moved(kwargs, device)
                raise InputError(
                    f"an input tensor of shape {tuple(t.shape)} is on {t.device}, but the model is on {device}; "
                    f"move it with .to({str(device)!r}) first."
                )
        return args, kwargs
