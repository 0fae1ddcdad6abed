"""Envoys: attribute access that mirrors a wrapped module tree and reads module values in a trace.

>>> import torch, attrib
>>> model = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()))
>>> model[0]
Envoy(model[0]: Linear)
>>> with model.trace(torch.ones(1, 3)):
...     hidden = model[0].output.save()
>>> tuple(hidden.shape)
(1, 4)
"""

from __future__ import annotations

import difflib
import operator
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..errors import ModulePathError, ReadOnlyEnvoyError

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Envoy", "display_path"]


def display_path(dotted: str, root: str = "model") -> str:
    """``"transformer.h.0.attn"`` -> ``"model.transformer.h[0].attn"``."""
    out = root
    for part in dotted.split(".") if dotted else ():
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


_VALUE_NAMES = ("output", "input", "inputs")


class Envoy:
    """Stands for one submodule of a :class:`~attrib.Model`.

    Attribute access returns child envoys (``envoy.mlp``), indexing works on ModuleList,
    Sequential and ModuleDict (negative indices, slices), and any other attribute is the
    module's own (``envoy.weight``, ``envoy.config``). Inside ``model.trace(...)``,
    ``.output``, ``.input`` and ``.inputs`` are the module's real values. A submodule whose name
    is shadowed by these three (BERT's ``attention.output``) is reached with ``envoy.submodule("output")``.
    """

    def __init__(self, module: torch.nn.Module, dotted: str, model: "Model") -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_dotted", dotted)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_children", {})

    # -- tree ---------------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        """The wrapped ``nn.Module`` itself."""
        return self._module

    @property
    def path(self) -> str:
        """Display path, e.g. ``model.transformer.h[3].attn``."""
        return display_path(self._dotted)

    def submodule(self, name: str) -> "Envoy":
        """The child module called ``name`` (also when a property such as ``output`` shadows it)."""
        child = self._module._modules.get(name)
        if child is None:
            self._missing(name)
        envoy = self._children.get(name)
        if envoy is None:
            dotted = f"{self._dotted}.{name}" if self._dotted else name
            envoy = Envoy(child, dotted, self._model)
            self._children[name] = envoy
        return envoy

    def _missing(self, name: str) -> None:
        names = list(self._module._modules) + [n for n, _ in self._module.named_parameters(recurse=False)]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        listed = ", ".join(list(self._module._modules)[:12]) or "none"
        raise ModulePathError(
            f"{self.path} ({type(self._module).__name__}) has no submodule or attribute {name!r}{hint}; "
            f"its submodules: {listed}."
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _VALUE_NAMES:
            # Python retries a property that raised AttributeError here: re-raise the model's own error.
            self._model._reraise_value_error(name)
        module = self._module
        if name in module._modules:
            return self.submodule(name)
        try:
            return getattr(module, name)
        except AttributeError:
            self._missing(name)

    def __getitem__(self, index: int | slice | str) -> "Envoy | list[Envoy]":
        names = list(self._module._modules)
        if isinstance(index, str):
            return self.submodule(index)
        if not isinstance(index, slice):
            try:
                index = operator.index(index)
            except TypeError:
                raise ModulePathError(
                    f"{self.path}[{index!r}] is not a submodule: index {self.path} with an integer, a slice or a "
                    f"submodule name, not {type(index).__name__}."
                ) from None
        if isinstance(index, slice):
            return [self.submodule(n) for n in names[index]]
        try:
            return self.submodule(names[index])
        except IndexError:
            raise ModulePathError(
                f"{self.path}[{index}] is out of range: {self.path} has {len(names)} submodules."
            ) from None

    def __len__(self) -> int:
        return len(self._module._modules)

    def __iter__(self) -> Iterator["Envoy"]:
        return (self.submodule(n) for n in list(self._module._modules))

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("output", "input", "inputs"):
            object.__setattr__(self, name, value)  # goes through the property setter
        else:
            raise ReadOnlyEnvoyError(
                f"{self.path}.{name} cannot be set through attrib; set .output, .input or .inputs "
                f"inside a trace, or change {self.path}.module directly."
            )

    def __repr__(self) -> str:
        return f"Envoy({self.path}: {type(self._module).__name__})"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._module._modules))

    # -- values in a trace --------------------------------------------------------------------
    @property
    def output(self) -> Any:
        """What the module returned in the current trace (a tensor, tuple or ModelOutput)."""
        return self._model._read(self, "output")

    @output.setter
    def output(self, value: Any) -> None:
        self._model._active_trace(self, "output").write(self._module, "output", value)

    @property
    def inputs(self) -> tuple[tuple, dict]:
        """``(args, kwargs)`` the module was called with in the current trace."""
        return self._model._read(self, "inputs")

    @inputs.setter
    def inputs(self, value: tuple[tuple, dict]) -> None:
        self._model._active_trace(self, "inputs").write(self._module, "inputs", value)

    @property
    def input(self) -> Any:
        """The first positional argument of the module's call (else its first keyword argument)."""
        return self._model._read(self, "input")

    @input.setter
    def input(self, value: Any) -> None:
        self._model._active_trace(self, "input").write(self._module, "input", value)
