"""GIM's attention: SDPA's forward, and a backward in which the softmax's gradient is taken at temperature T.

>>> import torch
>>> from attrib.methods.gim_attention import tempered_attention
>>> q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
>>> out = tempered_attention(q, k, v, None, 8 ** -0.5, 2.0)
>>> torch.allclose(out, torch.softmax(q @ k.transpose(-1, -2) * 8 ** -0.5, -1) @ v)
True

``attrib.gim`` switches a model to this attention function (``"attrib_gim"``, registered with transformers'
``AttentionInterface`` and the eager attention mask) for the call, so the forward keeps a fused kernel and only
the backward recomputes the weights: s = q kᵀ · scale + mask, p = softmax(s), s_T = softmax(s / T), and
∂s = s_T ⊙ (∂p − Σ s_T ∂p) with ∂p = ∂out · vᵀ — GIM's tempered softmax gradient (Edin et al. 2025), the
same numbers as :class:`attrib.methods.gim.TemperedSoftmax` on the probed eager attention. Modules without a
temperature set, or calls with a soft-cap or attention sinks, run transformers' own SDPA attention.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["tempered_attention", "NAME", "TEMPERATURE", "register"]

NAME = "attrib_gim"
TEMPERATURE = "_attrib_gim_temperature"       # on an attention module: the backward's softmax temperature


class _Tempered(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scale: float, temperature: float) -> torch.Tensor:
        ctx.save_for_backward(q, k, v, mask)
        ctx.scale, ctx.temperature = scale, temperature
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        q, k, v, mask = ctx.saved_tensors
        wide = torch.promote_types(q.dtype, torch.float32)           # the softmax in ≥ float32, as eager does
        scores = torch.matmul(q, k.transpose(-1, -2)).to(wide) * ctx.scale
        if mask is not None:
            scores = scores + mask.to(wide)
        p = torch.softmax(scores, dim=-1)
        tempered = torch.softmax(scores / ctx.temperature, dim=-1)
        dp = torch.matmul(grad.to(wide), v.to(wide).transpose(-1, -2))
        ds = tempered * (dp - (dp * tempered).sum(-1, keepdim=True))
        ds = ds.to(q.dtype)
        dq = torch.matmul(ds, k) * ctx.scale
        dk = torch.matmul(ds.transpose(-1, -2), q) * ctx.scale
        dv = torch.matmul(p.to(v.dtype).transpose(-1, -2), grad)
        return dq, dk, dv, None, None, None


def tempered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                       temperature: float) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v, with GIM's tempered softmax gradient. q, k, v: (batch, heads, positions, d)."""
    return _Tempered.apply(q, k, v, mask, scale, temperature)


def _attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    temperature = module.__dict__.get(TEMPERATURE)
    if temperature is None or kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    repeat = query.shape[1] // key.shape[1]
    if repeat > 1:                              # grouped-query attention: autograd sums the copies' gradients
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = tempered_attention(query, key, value, mask, scale, float(temperature))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``"attrib_gim"`` with transformers (idempotent), with the eager attention's additive mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
