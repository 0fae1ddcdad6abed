"""GIM, gradient interaction modifications: one backward with frozen norm statistics, the attention softmax's
gradient taken at temperature 2, and the query, key and value gradients scaled by ¼, ¼ and ½.

>>> import torch, transformers, attrib
>>> _ = torch.manual_seed(0)
>>> hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
>>> r = attrib.gim(attrib.LanguageModel(hf.eval()), torch.tensor([3, 5, 7]), target=4)
>>> len(r.scores)
3

Edin et al. 2025, "GIM: Improved Interpretability for Large Language Models"; the defaults and the attribution
are those of its package (``gim-explain`` 0.1.4): ``freeze_norm=True``, ``softmax_temperature=2.0``,
``q_scale=0.25``, ``k_scale=0.25``, ``v_scale=0.5``, and the attribution (input − baseline) × the modified
gradient at the input embeddings (summed per token for ``.scores``). ``gim.explain`` takes its baseline from the
tokenizer's space token; here ``baseline`` is any baseline of :func:`attrib.integrated_gradients` (default
``"zeros"``, which makes it gradient × input) — pass the space token's id for the package's choice.

Where attrib and the package differ, attrib does what the paper describes on every layout:

- every LayerNorm / RMSNorm is frozen (:class:`~attrib.methods.rules.FrozenNorm`); the package swaps only
  ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` modules, so a Llama's own RMSNorm keeps its gradient there.
- the softmax's temperature applies with every attention implementation: for the call the model runs
  :mod:`attrib.methods.gim_attention` (SDPA's forward; a backward that recomputes the weights and takes the
  softmax's gradient at temperature T), and on a model whose attention probes the user installed, a rule on the
  probed weights (:class:`TemperedSoftmax`, using that ``softmax(s / T)`` is the weights raised to 1/T and
  renormalized); the package patches ``torch.nn.functional.softmax``, which SDPA never calls.
- the q / k / v scales go on the projections' outputs (a gradient scale commutes with every backward step in
  between), so they apply with eager attention too; the package scales at SDPA's inputs only.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.model import Model
from ..core.release import releasing
from ..core.rules import Call, Rule, Rules
from ..errors import MethodError
from ..models import probes
from ..models.layouts import layout_of
from ..models.language import LanguageModel
from ..results import Attribution
from .baselines import baseline_for
from .batching import plan_key, run_rows
from .collect import attributions
from .checks import check_batch_size, check_finite_inputs, check_finite_values, check_grad_mode
from .composites import is_norm, qkv_factors
from .inputs import prepare
from .passes import gradient_at
from .rules import FrozenNorm

__all__ = ["gim", "TemperedSoftmax"]


class TemperedSoftmax(Rule):
    """On an attention's pattern probe: the softmax's backward as if at temperature ``T``. Its input is the
    softmax's output p; the gradient returned is g_T / p, which the softmax's own backward, p ⊙ (g' − Σ p g'),
    turns into g_T = s_T ⊙ (g − Σ s_T g) with s_T = p^(1/T) / Σ p^(1/T) = softmax(scores / T) (exact where p > 0;
    where p = 0, s_T is 0 too)."""

    def __init__(self, temperature: float = 2.0) -> None:
        self.temperature = temperature

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        p = call.input.to(torch.promote_types(call.input.dtype, torch.float32))
        g = grad_output.to(p.dtype)
        s = p.clamp(min=0) ** (1.0 / self.temperature)
        s = torch.nan_to_num(s / s.sum(-1, keepdim=True), nan=0.0)
        tempered = s * (g - (g * s).sum(-1, keepdim=True))
        positive = p > 0
        return torch.where(positive, tempered / torch.where(positive, p, torch.ones_like(p)), torch.zeros_like(p))


def _pairs(module: torch.nn.Module, freeze_norm: bool, temperature: float | None,
           scales: tuple[float, float, float], at_probes: bool) -> list[tuple]:
    layout = layout_of(module)
    out: list[tuple] = []
    layers = module.get_submodule(layout.layers)
    for i, layer in enumerate(layers):
        if scales != (1.0, 1.0, 1.0):
            out += [(m, rule, f"{layout.layers}.{i}.{p}") for m, rule, p in qkv_factors(layout, layer, *scales)]
        if at_probes and temperature is not None and temperature != 1.0:
            attn = layer.get_submodule(probes.attention_path(layout))
            out.append((attn.get_submodule(f"{probes.CHILD}.pattern"), TemperedSoftmax(temperature),
                        f"{layout.layers}.{i}.{probes.attention_path(layout)}.softmax"))
    if freeze_norm:
        out += [(m, FrozenNorm(), path) for path, m in module.named_modules() if is_norm(m)]
    return out


def _attentions(module: torch.nn.Module) -> list[torch.nn.Module]:
    layout = layout_of(module)
    return [layer.get_submodule(probes.attention_path(layout)) for layer in module.get_submodule(layout.layers)]


def _use_tempered_attention(module: torch.nn.Module, temperature: float) -> None:
    """The model's attention becomes ``attrib_gim`` (SDPA forward, tempered backward) until restored."""
    from . import gim_attention

    if not hasattr(module, "set_attn_implementation"):
        raise MethodError(f"{type(module).__name__} is not a Hugging Face model with set_attn_implementation(), so "
                          "GIM's softmax temperature cannot reach its attention; pass softmax_temperature=None.")
    gim_attention.register()
    module.__dict__["_attrib_gim_previous"] = module.config._attn_implementation
    module.set_attn_implementation(gim_attention.NAME)
    for attn in _attentions(module):
        attn.__dict__[gim_attention.TEMPERATURE] = temperature


def _restore_attention(module: torch.nn.Module) -> None:
    from . import gim_attention

    previous = module.__dict__.pop("_attrib_gim_previous", None)
    for attn in _attentions(module):
        attn.__dict__.pop(gim_attention.TEMPERATURE, None)
    if previous is not None:
        module.set_attn_implementation(previous)


@releasing
def gim(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
        metric: Callable[[Any], torch.Tensor] | None = None, baseline: Any = "zeros", freeze_norm: bool = True,
        softmax_temperature: float | None = 2.0, q_scale: float | None = 0.25, k_scale: float | None = 0.25,
        v_scale: float | None = 0.5, batch_size: int | None = None) -> Attribution | list[Attribution]:
    """GIM (Edin et al. 2025) of the target's score; see the module docstring. A scale or temperature of None
    leaves that part out (as 1 does)."""
    check_grad_mode("gim", model)
    if not isinstance(model, LanguageModel):
        raise MethodError("gim modifies a transformer's norms, attention softmax and q/k/v, so it needs a language "
                          "model (attrib.LanguageModel(hf_model, tokenizer)); use lrp or saliency for other models.")
    for name, value in (("softmax_temperature", softmax_temperature), ("q_scale", q_scale), ("k_scale", k_scale),
                        ("v_scale", v_scale)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                  (name == "softmax_temperature" and value <= 0)):
            raise MethodError(f"{name}={value!r:.30} must be a number{' > 0' if name == 'softmax_temperature' else ''}"
                              " or None.")
    batch_size = check_batch_size(batch_size)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    b = baseline_for(prep, baseline)
    scales = tuple(1.0 if s is None else float(s) for s in (q_scale, k_scale, v_scale))
    temperature = None if softmax_temperature is None else float(softmax_temperature)
    at_probes = probes.installed(model.module)      # probes the user installed: the temperature goes on them
    tempered = temperature not in (None, 1.0)
    try:
        if tempered and not at_probes:
            _use_tempered_attention(model.module, temperature)             # type: ignore[arg-type]
        pairs = _pairs(model.module, freeze_norm, temperature, scales, at_probes)   # type: ignore[arg-type]
        x = prep.x

        def run(chunk: torch.Tensor) -> torch.Tensor:
            args, kwargs = prep.call(chunk)
            scores, grad = gradient_at(model, prep.site, x[chunk], lambda o: prep.scores(o, chunk).sum(-1), args,
                                       kwargs)
            value = grad * (x[chunk] - b[chunk])
            return value.to(torch.promote_types(value.dtype, torch.float32)).unsqueeze(1)

        with Rules(pairs):
            sums = run_rows(run, prep.n_items, lambda chunk: chunk, prep.n_items, batch_size, like=x,
                            remember=plan_key(model, ("gim",), x))
    finally:
        if tempered and not at_probes:
            _restore_attention(model.module)
    values = sums[:, 0]
    check_finite_values("gim", values, prep)
    info = dict(freeze_norm=freeze_norm, softmax_temperature=temperature, q_scale=scales[0], k_scale=scales[1],
                v_scale=scales[2], baseline=baseline if isinstance(baseline, (str, int, float)) else "tensor")
    return attributions(prep, values, "gim", info=info)
