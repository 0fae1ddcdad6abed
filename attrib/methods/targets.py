"""What an attribution explains: a target score computed from a model's output, the same way in every method.

>>> import torch
>>> from attrib.methods.targets import Target, token_scores
>>> logits = torch.arange(12.0).reshape(1, 3, 4)          # batch 1, 3 positions, vocabulary of 4
>>> token_scores(logits, torch.tensor([[2]]), None, "logit").tolist()   # token 2 at the last position
[[10.0]]

Conventions (every method, language models and plain models alike):

- ``target=None``: the model's top prediction at the last position (each item's own).
- ``target=" Paris"`` (tokenized without special tokens) or a token / class id. A multi-token string (or a
  list of ids, on a language model) is a teacher-forced continuation: the prompt is extended by its tokens but
  the last, and its score is the sum over its tokens (``per_token`` methods keep one score per token).
- One target for every item, or a list with one per item (a list of strings, or on a plain model one class
  id per row).
- ``score``: ``"logit"`` (default), ``"logprob"`` or ``"prob"``, computed in the logits' dtype promoted to
  at least float32 (never cast down: a float64 model's probabilities stay float64).
- ``contrast=" John"``: score(target) − score(contrast), token by token (same number of tokens).
- ``metric=callable(logits) -> tensor[batch]``: anything else (then ``target`` only extends the prompt). A
  metric with a second parameter without default, ``metric(logits, items)``, also gets each row's input
  item (or patching pair) as a (rows,) index tensor. On a plain model a callable ``target`` is the same as
  ``metric``.

"Logits" are ``output.logits`` when the output has them, else the output's (first) tensor. A 2-D output
(batch, classes) is one position; an output of more dimensions than 3 is flattened to (batch, 1, -1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import TargetError
from ..models.ids import as_int
from ..models.sites import first_tensor

__all__ = ["Target", "SCORES", "logits_of", "token_scores", "resolve_targets"]

SCORES = ("logit", "logprob", "prob")


@dataclass(frozen=True)
class Target:
    """Token (or class) ids to explain and how to score them."""

    ids: tuple[int, ...]
    contrast_ids: tuple[int, ...] | None
    score: str
    text: str
    metric: Callable[[torch.Tensor], torch.Tensor] | None = None
    contrast_text: str = ""

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def continuation(self) -> list[int]:
        """Tokens appended to the prompt for teacher forcing (all target tokens but the last)."""
        return list(self.ids[:-1])

    def describe(self) -> str:
        base = self.text if self.metric is None else "metric"
        return base if self.contrast_ids is None else f"{base!r} − {self.contrast_text!r}"


def logits_of(output: Any) -> torch.Tensor:
    """The scores a target reads: ``output.logits``, else the first tensor; (batch, positions, vocab)."""
    logits = output.logits if hasattr(output, "logits") else first_tensor(output)
    if logits.dim() == 2:
        return logits.unsqueeze(1)
    if logits.dim() > 3:
        return logits.reshape(logits.shape[0], 1, -1)
    return logits


def token_scores(logits: torch.Tensor, ids: torch.Tensor, contrast: torch.Tensor | None, score: str) -> torch.Tensor:
    """(rows, n): each row's score of its own ``n`` target ids at its last ``n`` positions, minus the
    contrast's. ``logit`` keeps the logits' dtype; ``prob``/``logprob`` are computed in at least float32."""
    n = ids.shape[1]
    last = logits[:, -n:]
    if score != "logit":
        last = last.to(torch.promote_types(last.dtype, torch.float32))
        last = torch.log_softmax(last, -1) if score == "logprob" else torch.softmax(last, -1)
    out = last.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    if contrast is not None:
        out = out - last.gather(-1, contrast.unsqueeze(-1)).squeeze(-1)
    return out


def _ids(tokenizer: Any, value: Any, vocab: int | None, what: str) -> tuple[int, ...]:
    if isinstance(value, str):
        if tokenizer is None:
            raise TargetError(f"{what}={value!r} is text, but the model has no tokenizer; pass token ids.")
        ids = list(tokenizer(value, add_special_tokens=False)["input_ids"])
        if not ids:
            raise TargetError(f"{what}={value!r} tokenizes to no tokens; pass a non-empty string or a token id.")
    elif isinstance(value, (bool, np.bool_)):
        raise TargetError(f"{what}={value!r} is a bool; pass a token / class id or a string.")
    elif as_int(value) is not None:                 # Python, numpy and 0-d tensor ints
        ids = [int(value)]
    elif isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TargetError(f"{what} is a {value.dtype} tensor; pass integer token / class ids.")
        ids = [int(v) for v in value.flatten().tolist()]
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TargetError(f"{what} is a numpy array of {value.dtype}; pass integer token / class ids.")
        ids = [int(v) for v in value.flatten().tolist()]
    elif isinstance(value, (list, tuple)) and all(as_int(v) is not None for v in value):
        ids = [int(v) for v in value]
    else:
        raise TargetError(f"{what}={value!r:.80} is not a string, a token / class id or a list of ids.")
    if not ids:
        raise TargetError(f"{what} is empty; pass a string or at least one id.")
    bad = [i for i in ids if not 0 <= i < (vocab if vocab is not None else 2**62)]
    if bad:
        raise TargetError(f"{what} has id {bad[0]}, outside the model's {vocab} outputs.")
    return tuple(ids)


def _per_item(value: Any, n: int, per_row_ids: bool) -> list[Any]:
    """``value`` for each of ``n`` items: a list of one per item, or the same value for all."""
    if isinstance(value, (list, tuple)) and len(value) == n and value and (
            all(isinstance(v, (str, list, tuple, torch.Tensor)) for v in value) or per_row_ids):
        return list(value)
    if per_row_ids and isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 1 and len(value) == n and n > 1:
        return list(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        raise TargetError(f"got {len(value)} targets for {n} inputs; give one target, or one per input.")
    return [value] * n


def resolve_targets(model: Any, n_items: int, last_logits: torch.Tensor | None, target: Any = None,
                    contrast: Any = None, score: str = "logit", metric: Callable | None = None,
                    tokenizer: Any = None, vocab: int | None = None, language: bool = True) -> list[Target]:
    """One :class:`Target` per item. ``last_logits`` (items, vocab) are each item's last-position logits,
    needed when ``target`` is None. On a plain model (``language=False``) a list of ids gives one per row."""
    if score not in SCORES:
        raise TargetError(f"score={score!r} is not one of {', '.join(SCORES)}.")
    if metric is not None and not callable(metric):
        raise TargetError(f"metric must be a callable (logits -> tensor of shape (batch,)), got {metric!r:.60}.")
    if callable(target) and not isinstance(target, torch.Tensor):
        if language:
            raise TargetError("a callable target is the plain-model form; on a language model pass metric=... "
                              "(a callable on the logits) instead.")
        if metric is not None:
            raise TargetError("pass either a callable target or metric=..., not both.")
        target, metric = None, target
    if metric is not None and contrast is not None:
        raise TargetError("contrast= is scored by attrib; with metric=..., subtract inside the metric instead.")
    if metric is not None and score != "logit":
        raise TargetError(f"score={score!r} scores a target; with metric=..., compute the probability inside the "
                          "metric instead.")
    if metric is not None and target is not None and not language:
        raise TargetError("a plain model's metric is the whole score: pass target=... or metric=..., not both (on a "
                          "language model a target with a metric extends the prompt).")

    def shown(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids)) if tokenizer is not None else str(list(ids) if len(ids) > 1 else ids[0])

    targets = []
    contrasts = _per_item(contrast, n_items, not language)
    for i, value in enumerate(_per_item(target, n_items, not language)):
        if metric is not None and value is None:
            targets.append(Target((), None, score, "metric", metric))
            continue
        if value is None:
            if last_logits is None:
                raise TargetError("target=None needs the model's prediction; pass a target.")
            ids = (int(last_logits[i].argmax()),)
        else:
            ids = _ids(tokenizer, value, vocab, "target")
        contrast_ids = None
        if contrasts[i] is not None:
            contrast_ids = _ids(tokenizer, contrasts[i], vocab, "contrast")
            if len(contrast_ids) != len(ids):
                raise TargetError(
                    f"contrast={contrasts[i]!r} has {len(contrast_ids)} tokens but the target has {len(ids)}; "
                    "they are compared token by token, so give them the same length."
                )
        targets.append(Target(ids, contrast_ids, score, shown(ids), metric,
                              "" if contrast_ids is None else shown(contrast_ids)))
    if len({t.n_tokens for t in targets}) > 1:
        raise TargetError("every input of a batch needs a target with the same number of tokens.")
    return targets
