"""Generate a continuation, then attribute every generated token to the prompt: the outputs × inputs matrix.

>>> import attrib
>>> model = attrib.load_demo_model(device="cpu")
>>> a = attrib.generate_and_attribute(model, "The capital of France is", max_new_tokens=2, n_steps=8)
>>> a.info["generated"], a.output_tokens, a.scores.shape       # 2 generated tokens × 5 prompt tokens
(' Paris.', [' Paris', '.'], torch.Size([2, 5]))

What Inseq's ``model.attribute(prompt)`` and Captum's ``LLMGradientAttribution.attribute(inp, target=None)``
do: the model continues the prompt (greedy by default, as both do; ``do_sample=True`` and
``generation_kwargs`` go to Hugging Face's ``generate``), and integrated gradients then explains each
generated token's score, teacher-forced, with ``per_token=True``: row i of ``.scores`` attributes generated
token i to the prompt's tokens. Every keyword of :func:`attrib.integrated_gradients` passes through (``score``,
``baseline``, ``n_steps``, ``layer``, ``batch_size`` …). A list of prompts gives a list of results; prompts
whose continuations have the same number of tokens share the batched passes.

The choice of a helper over ``target=None, generate=N`` inside each method keeps ``target=None`` meaning what
it means everywhere (the top next token) and the generation arguments in one place.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.model import Model
from ..errors import MethodError
from ..models.ids import as_int
from ..models.language import LanguageModel
from ..results import Attribution
from .inputs import encode
from .integrated_gradients import integrated_gradients

__all__ = ["generate_and_attribute"]


def _continuations(model: LanguageModel, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                   do_sample: bool, generation_kwargs: dict[str, Any]) -> list[list[int]]:
    """Each row's generated tokens (up to and including an end-of-sequence token, none after it)."""
    module = model.module
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": model.pad_id,
              **({} if do_sample else {"temperature": None, "top_p": None, "top_k": None}), **generation_kwargs}
    with torch.no_grad():
        out = module.generate(input_ids=ids, attention_mask=mask, **kwargs)
    new = out[:, 1:] if model.is_encoder_decoder else out[:, ids.shape[1]:]
    eos = getattr(getattr(module, "generation_config", None), "eos_token_id", None)
    stops = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    rows = []
    for row in new.tolist():
        kept: list[int] = []
        for token in row:
            kept.append(token)
            if token in stops:
                break
        rows.append(kept)
    return rows


def generate_and_attribute(model: Model, inputs: Any, *, max_new_tokens: int = 10, do_sample: bool = False,
                           generation_kwargs: dict[str, Any] | None = None,
                           **kwargs: Any) -> Attribution | list[Attribution]:
    """Generate up to ``max_new_tokens`` tokens after each prompt and attribute them, one row per generated token
    (integrated gradients, ``per_token=True``; Sundararajan et al. 2017). See the module docstring.

    The result's ``output_tokens`` are the generated tokens, ``info["generated"]`` their text and
    ``info["generated_ids"]`` their ids.
    """
    if not isinstance(model, LanguageModel):
        raise MethodError(f"generate_and_attribute needs an attrib.LanguageModel (it generates text), got "
                          f"{type(model).__name__}; use attrib.integrated_gradients with a target on other models.")
    count = as_int(max_new_tokens)
    if count is None or count < 1:
        raise MethodError(f"max_new_tokens must be a positive int, got {max_new_tokens!r:.40}; pass e.g. "
                          "max_new_tokens=10.")
    for name in ("target", "per_token"):
        if name in kwargs:
            raise MethodError(f"generate_and_attribute chooses {name}= itself (the generated tokens, one row each); "
                              "drop it, or call attrib.integrated_gradients(..., target=..., per_token=True).")
    if not hasattr(model.module, "generate"):
        raise MethodError(f"{type(model.module).__name__} has no generate() method; generate the continuation "
                          "yourself and pass it as target= to attrib.integrated_gradients(..., per_token=True).")
    enc, single = encode(model, inputs, "inputs")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    generated = _continuations(model, ids, mask, count, bool(do_sample), dict(generation_kwargs or {}))
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    results: list[Attribution | None] = [None] * len(prompts)
    for length in sorted({len(g) for g in generated}):
        if length == 0:
            raise MethodError("the model generated no tokens; check generation_kwargs (e.g. max_new_tokens).")
        group = [i for i, g in enumerate(generated) if len(g) == length]
        batch = torch.tensor(prompts[group[0]]) if single else [prompts[i] for i in group]
        target = generated[group[0]] if single else [generated[i] for i in group]
        out = integrated_gradients(model, batch, target=target, per_token=True, **kwargs)
        for i, result in zip(group, [out] if single else out):
            result.info.update(generated=model.tokenizer.decode(generated[i]) if model.tokenizer is not None
                               else "".join(model.token_labels(generated[i])), generated_ids=list(generated[i]))
            results[i] = result
    done = [r for r in results if r is not None]
    return done[0] if single else done
