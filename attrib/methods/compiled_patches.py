"""What a compiled call changes on a Hugging Face model for its length, and restores: its attention
implementation, and (opt-in) liger-kernel's fused kernels.

>>> import torch, transformers
>>> from attrib.methods.compiled_patches import attention
>>> cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
...                                num_key_value_heads=1, vocab_size=32)
>>> hf = transformers.LlamaForCausalLM(cfg)
>>> with attention(hf, "eager"):
...     inside = hf.config._attn_implementation
>>> inside, hf.config._attn_implementation
('eager', 'sdpa')
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Iterator

import torch

from ..errors import MethodError

__all__ = ["attention", "liger"]


@contextlib.contextmanager
def attention(hf: torch.nn.Module, implementation: str) -> Iterator[None]:
    """The Hugging Face attention ``implementation`` on ``hf`` for the length of the block (through
    ``set_attn_implementation``, as GIM and the probes switch it), the previous one restored afterwards."""
    if not hasattr(hf, "set_attn_implementation"):
        raise MethodError(f"CompileOptions(attention={implementation!r}) switches the attention of a Hugging Face "
                          f"model with set_attn_implementation(), which {type(hf).__name__} lacks; pass "
                          "CompileOptions(attention='model').")
    previous = hf.config._attn_implementation
    if previous == implementation:
        yield
        return
    hf.set_attn_implementation(implementation)
    try:
        yield
    finally:
        hf.set_attn_implementation(previous)


@contextlib.contextmanager
def liger(hf: torch.nn.Module) -> Iterator[None]:
    """liger-kernel's RMSNorm, SwiGLU and RoPE on ``hf`` for the length of the call (its instance patches and its
    module-level ones undone afterwards)."""
    model_type = getattr(getattr(hf, "config", None), "model_type", None)
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        raise MethodError("CompileOptions(liger=True) needs the liger-kernel package, which is not installed; "
                          "pip install liger-kernel, or leave liger out.") from None
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None or next(hf.parameters()).device.type != "cuda":
        raise MethodError(f"CompileOptions(liger=True) runs liger-kernel's Triton kernels on CUDA models of the "
                          f"families it knows, not this {model_type!r} model on "
                          f"{next(hf.parameters()).device.type}; leave liger out.")
    wanted = {"rope": True, "swiglu": True, "geglu": True, "rms_norm": True, "layer_norm": True,
              "cross_entropy": False, "fused_linear_cross_entropy": False}
    accepted = inspect.signature(apply).parameters
    modeling = sys.modules[type(hf).__module__]
    module_vars = dict(vars(modeling))
    saved = [(m, dict(m.__dict__)) for m in hf.modules()]
    try:
        apply(model=hf, **{k: v for k, v in wanted.items() if k in accepted})
        yield
    finally:
        for m, state in saved:
            m.__dict__.clear()
            m.__dict__.update(state)
        for name in set(vars(modeling)) - set(module_vars):
            delattr(modeling, name)
        for name, value in module_vars.items():
            setattr(modeling, name, value)
