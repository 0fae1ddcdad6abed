"""Why a traced forward failed, said in attrib's terms: a float input in another dtype than the model's, or
code compiled with ``torch.compile``, which cannot pause mid-forward to hand over a value.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(2, 1).double())
>>> try:
...     with net.trace(torch.ones(1, 2)):              # float32 input, float64 model
...         pass
... except attrib.InputError as err:
...     print(str(err)[:53])
an input tensor of shape (1, 2) is torch.float32, but
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import CompiledModuleError, InputError
from .values import tensors_in

if TYPE_CHECKING:
    from .model import Model

__all__ = ["failed_forward", "refuse_compiled"]


def failed_forward(model: "Model", args: tuple, kwargs: dict, err: Exception) -> tuple[Exception, bool] | None:
    """The error to raise instead of ``err``, which the forward of ``model`` on ``args``/``kwargs`` raised, and
    whether ``err`` stays its cause; ``None``: raise ``err`` itself."""
    mixed = _mixed_dtype(model, args, kwargs, err)
    if mixed is not None:
        return mixed, True
    compiled = _compiled_submodule(model) if type(err).__module__.startswith("torch._dynamo") else None
    if compiled is None:
        return None
    return CompiledModuleError(
        f"{compiled} was compiled with torch.compile, and compiled code cannot pause mid-forward to hand "
        "over its values; trace the model as it was before compiling (compile a copy for plain runs, or "
        "wrap the module's `_orig_mod`)."), False


def _mixed_dtype(model: "Model", args: tuple, kwargs: dict, err: Exception) -> InputError | None:
    """When the forward failed on a dtype mismatch and an input's float dtype is not the model's: say so."""
    if not isinstance(err, RuntimeError) or "dtype" not in str(err) and "scalar type" not in str(err):
        return None
    dtype = model.dtype
    for t in tensors_in((args, kwargs)):
        if t.is_floating_point() and t.dtype != dtype:
            return InputError(
                f"an input tensor of shape {tuple(t.shape)} is {t.dtype}, but the model's parameters are {dtype}, "
                f"and the forward failed on it ({str(err).splitlines()[0][:80]}); convert it with .to({dtype})."
            )
    return None


def _compiled_submodule(model: "Model") -> str | None:
    """The path of a module compiled in place (``module.compile()``) or replaced by ``torch.compile(...)``."""
    for name, m in model.module.named_modules():
        if getattr(m, "_compiled_call_impl", None) is not None or type(m).__name__ == "OptimizedModule":
            return model._path_of(m) if name else "the model"
    return None


def refuse_compiled(model: "Model", module: torch.nn.Module, kind: str) -> None:
    """Refuse a read whose pause would fall inside compiled code (``module.compile()`` on it or on a module
    around it, or a ``torch.compile``'d module around it): a greenlet switch there breaks dynamo."""
    chain = model._chain(module)
    for i, m in enumerate(chain):
        outer = i < len(chain) - 1
        if getattr(m, "_compiled_call_impl", None) is not None or (outer and type(m).__name__ == "OptimizedModule"):
            raise CompiledModuleError(
                f"{model._path_of(module)}.{kind} cannot be read because {model._path_of(m)} was compiled "
                "with torch.compile, and compiled code cannot pause mid-forward to hand over a value; trace the "
                "model as it was before compiling (compile a copy for plain runs)."
            )
