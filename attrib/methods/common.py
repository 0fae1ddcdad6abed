"""What every method on a language model shares: prompts → token ids, targets, the embedding layer,
and one batched forward/backward with a module's output replaced.

>>> import torch, attrib
>>> from attrib.methods.common import gradient_at
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)))
>>> x = torch.tensor([[1.0, 2.0]])
>>> scores, grads = gradient_at(net, net[0], torch.ones(1, 3), lambda out: out[:, 0], (x,), {})
>>> torch.allclose(grads, net.module[1].weight.detach())
True
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..core.envoy import Envoy
from ..errors import InputError, MethodError
from ..core.model import LanguageModel, Model
from ..core.release import free_after_oom, is_oom
from .targets import Target, resolve_target

__all__ = ["Prepared", "prepare", "embedding_envoy", "envoy_for", "gradient_at", "first_tensor",
           "MethodError", "is_oom", "token_strings"]


def first_tensor(value: Any) -> torch.Tensor:
    """The tensor a module produced (the first element of a tuple output)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise MethodError(f"expected a module output that is a tensor or a tuple starting with one, got {type(value).__name__}.")


def replace_first(value: Any, new: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return new
    return type(value)((new, *value[1:])) if isinstance(value, tuple) else [new, *value[1:]]


def envoy_for(model: Model, layer: str | Envoy) -> Envoy:
    """The envoy of ``layer`` (a dotted path such as ``"model.layers.3"`` or an envoy)."""
    if isinstance(layer, Envoy):
        return layer
    if not isinstance(layer, str):
        raise MethodError(f"layer must be a module path like 'model.layers.3' or an envoy, got {type(layer).__name__}.")
    obj: Any = model
    for part in layer.split("."):
        obj = obj[int(part)] if part.lstrip("-").isdigit() else getattr(obj, part)
    if not isinstance(obj, Envoy):
        raise MethodError(f"layer={layer!r} is not a module of the model (it is a {type(obj).__name__}).")
    return obj


def embedding_envoy(model: Model) -> Envoy:
    """The input embedding module of a Hugging Face model, as an envoy."""
    getter = getattr(model.module, "get_input_embeddings", None)
    module = getter() if getter is not None else None
    if module is None:
        raise MethodError(
            f"{type(model.module).__name__} has no input embedding (get_input_embeddings()); pass layer=... "
            "to attribute to a module's output instead."
        )
    return envoy_for(model, model._dotted_of(module))


def token_strings(model: LanguageModel, ids: Sequence[int]) -> list[str]:
    tok = model.tokenizer
    if tok is None:
        return [str(i) for i in ids]
    return [tok.decode([int(i)]) for i in ids]


@dataclass
class Prepared:
    """Prompts tokenized as one left-padded batch, extended by the targets' teacher-forced tokens."""

    input_ids: torch.Tensor          # (P, T) prompt (+ continuation) ids
    attention_mask: torch.Tensor     # (P, T)
    n_prompt: int                    # positions of the (padded) prompts; the rest is continuation
    targets: list[Target]            # one per prompt (same number of tokens each)
    tokens: list[list[str]]          # prompt tokens per prompt, padding removed
    pad: torch.Tensor                # (P, n_prompt) True where padding

    @property
    def n_out(self) -> int:
        return self.targets[0].n_tokens

    @property
    def keep(self) -> int:
        """How many last positions' logits to compute (0: all, which a metric may need)."""
        return 0 if self.targets[0].metric is not None else self.n_out

    def target_ids(self) -> torch.Tensor:
        return torch.tensor([t.ids for t in self.targets], device=self.input_ids.device, dtype=torch.long)

    def contrast_ids(self) -> torch.Tensor | None:
        if self.targets[0].contrast_ids is None:
            return None
        return torch.tensor([t.contrast_ids for t in self.targets], device=self.input_ids.device)


def _context_length(model: Model) -> int | None:
    config = getattr(model.module, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def prepare(model: LanguageModel, prompts: str | Sequence[str] | torch.Tensor, target: Any = None, contrast: Any = None,
            score: str = "logit", metric: Callable | None = None) -> Prepared:
    """Tokenize, resolve targets (``None``: each prompt's top next token), append continuations."""
    if not isinstance(model, LanguageModel):
        raise MethodError("this path needs an attrib.LanguageModel (a Hugging Face LM and its tokenizer).")
    if isinstance(prompts, torch.Tensor):  # token ids, (T,) or (P, T)
        if prompts.is_floating_point() or prompts.numel() == 0:
            raise InputError(f"token ids must be a non-empty integer tensor, got {prompts.dtype} of shape "
                             f"{tuple(prompts.shape)}.")
        ids = (prompts.unsqueeze(0) if prompts.dim() == 1 else prompts).to(model.device)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    else:
        enc = model.tokenize(prompts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n_prompt = ids.shape[1]
    last = None
    if target is None and metric is None:
        with torch.no_grad():
            last = model.module(**lm_kwargs(model, ids, mask, 1)).logits[:, -1]
    targets = [resolve_target(model, None if last is None else last[i], target, contrast, score, metric)
               for i in range(ids.shape[0])]
    if len({t.n_tokens for t in targets}) > 1:
        raise MethodError("every prompt of a batch needs a target with the same number of tokens.")
    cont = targets[0].continuation()
    if cont:
        extra = torch.tensor([t.continuation() for t in targets], device=ids.device, dtype=ids.dtype)
        ids = torch.cat([ids, extra], dim=1)
        mask = torch.cat([mask, torch.ones_like(extra)], dim=1)
    limit = _context_length(model)
    if limit is not None and ids.shape[1] > limit:
        raise InputError(
            f"the prompt and target take {ids.shape[1]} tokens, more than the model's context of {limit}; "
            "shorten the prompt."
        )
    pad = enc["attention_mask"] == 0
    tokens = [token_strings(model, row[~p].tolist()) for row, p in zip(enc["input_ids"], pad)]
    return Prepared(ids, mask, n_prompt, targets, tokens, pad)


def _accepts(module: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def lm_kwargs(model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: int) -> dict[str, Any]:
    """Call arguments that compute only the last ``keep`` positions' logits where the model allows it."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if not bool(attention_mask.all()) and _accepts(model.module, "position_ids"):
        # left padding: number the real tokens from 0 (absolute position embeddings, e.g. GPT-2, need it)
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if _accepts(model.module, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    if _accepts(model.module, "use_cache"):
        kwargs["use_cache"] = False
    return kwargs


def gradient_at(model: Model, envoy: Envoy, value: torch.Tensor, score_fn: Callable[[Any], torch.Tensor],
                args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One traced pass with ``envoy``'s output replaced by ``value``: (scores (R,), d Σscores / d value).

    ``score_fn(model_output) -> (R,)`` scores each row. Rows are independent, so the gradient of their sum
    is each row's own gradient. No parameter gradient is computed.
    """
    leaf = value.detach().requires_grad_(True)
    with torch.enable_grad(), model.trace(*args, **kwargs):
        envoy.output = replace_first(envoy.output, leaf)
        scores = score_fn(model.output)
        with scores.sum().backward():
            grad = leaf.grad.save()
    return scores.detach(), grad


def jacobian_at(model: Model, envoy: Envoy, value: torch.Tensor, score_fn: Callable[[Any], torch.Tensor],
                kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One traced forward with ``envoy``'s output replaced by ``value`` and ``score_fn -> (R, n)`` scores;
    then every column's gradient in one batched vector-Jacobian product: (scores (R, n), grads (R, n, ...)).

    The forward runs once for all ``n`` scores (not once per score); the backward is vmapped over the ``n``
    unit vectors (``is_grads_batched``), and only ``value``'s gradient is computed, never the parameters'.
    """
    leaf = value.detach().requires_grad_(True)
    with torch.enable_grad(), model.trace(**kwargs):
        envoy.output = replace_first(envoy.output, leaf)
        scores = score_fn(model.output).save()
    n = scores.shape[1]
    units = torch.eye(n, dtype=scores.dtype, device=scores.device).unsqueeze(1).expand(n, *scores.shape)
    try:
        (grads,) = torch.autograd.grad(scores, leaf, units, is_grads_batched=True, retain_graph=True)
        return scores.detach(), grads.movedim(0, 1)
    except RuntimeError as err:
        if is_oom(err) and value.shape[0] > 1:
            raise                                   # the caller halves the batch and retries
        free_after_oom(err, value.device)           # what the batched backward held, before the loop
        # an op without a batching rule (a custom autograd Function, an extension kernel), or no memory
        # for n gradients at once even at one row: one backward per column, still one forward
    grads = [torch.autograd.grad(scores[:, j].sum(), leaf, retain_graph=j < n - 1)[0] for j in range(n)]
    return scores.detach(), torch.stack(grads, dim=1)
