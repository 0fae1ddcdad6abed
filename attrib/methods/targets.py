"""What an attribution explains: a target score computed from a language model's logits.

>>> import torch
>>> from attrib.methods.targets import Target
>>> t = Target(ids=(2,), contrast_ids=None, score="logit", text="x")
>>> logits = torch.arange(12.0).reshape(1, 3, 4)          # batch 1, 3 positions, vocab 4
>>> t.scores(logits).tolist()                             # logit of token 2 at the last position
[10.0]

Conventions (shared by every method on language models):

- ``target=None``: the model's top next-token prediction at the last position of the prompt.
- ``target=" Paris"`` (tokenized without special tokens) or a token id. A multi-token string is a
  teacher-forced continuation: the prompt is extended by its tokens but the last, and its score is the
  sum over its tokens (``per_token`` methods keep one score per token).
- ``score``: ``"logit"`` (default), ``"logprob"`` or ``"prob"``.
- ``contrast=" John"``: score(target) − score(contrast), token by token (same number of tokens).
- ``metric=callable(logits) -> tensor[batch]``: anything else (then ``target`` only extends the prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import TargetError

__all__ = ["Target", "resolve_target", "SCORES"]

SCORES = ("logit", "logprob", "prob")


@dataclass(frozen=True)
class Target:
    """Token ids to explain; ``scores(logits)`` turns the logits of the last positions into numbers."""

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

    def _per_position(self, logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        n = len(ids)
        last = logits[:, -n:, :].float() if self.score != "logit" else logits[:, -n:, :]
        if self.score == "logprob":
            last = torch.log_softmax(last, dim=-1)
        elif self.score == "prob":
            last = torch.softmax(last, dim=-1)
        index = torch.tensor(ids, device=logits.device).view(1, n, 1).expand(logits.shape[0], n, 1)
        return last.gather(-1, index).squeeze(-1)

    def token_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch, n_tokens): the score of each target token, from logits whose last ``n_tokens``
        positions predict them (contrast subtracted)."""
        out = self._per_position(logits, self.ids)
        if self.contrast_ids is not None:
            out = out - self._per_position(logits, self.contrast_ids)
        return out

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """(batch,): the target's score, summed over its tokens, or ``metric(logits)``."""
        if self.metric is not None:
            value = self.metric(logits)
            if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape[0] != logits.shape[0]:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TargetError(
                    f"metric(logits) must return a tensor of shape (batch,) = ({logits.shape[0]},), got {shape}."
                )
            return value
        return self.token_scores(logits).sum(-1)

    def describe(self) -> str:
        base = self.text if self.metric is None else "metric"
        return base if self.contrast_ids is None else f"{base!r} − {self.contrast_text!r}"


def _tokens(tokenizer: Any, value: str | int | Sequence[int], vocab: int, what: str) -> tuple[int, ...]:
    if isinstance(value, str):
        if tokenizer is None:
            raise TargetError(f"{what}={value!r} is text, but the model has no tokenizer; pass token ids.")
        ids = tokenizer(value, add_special_tokens=False)["input_ids"]
        if not ids:
            raise TargetError(f"{what}={value!r} tokenizes to no tokens; pass a non-empty string or a token id.")
    elif isinstance(value, int):
        ids = [value]
    elif isinstance(value, torch.Tensor):
        ids = [int(v) for v in value.flatten().tolist()]
    else:
        ids = [int(v) for v in value]
    if not ids:
        raise TargetError(f"{what} is empty; pass a string or at least one token id.")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise TargetError(f"{what} has token id {bad[0]}, outside the vocabulary of size {vocab}.")
    return tuple(ids)


def resolve_target(model: Any, logits_last: torch.Tensor | None, target: Any = None, contrast: Any = None,
                   score: str = "logit", metric: Callable | None = None) -> Target:
    """Build a :class:`Target` for a language model.

    ``logits_last`` (vocab,) are the logits at the prompt's last position, used when ``target`` is None.
    """
    if score not in SCORES:
        raise TargetError(f"score={score!r} is not one of {', '.join(SCORES)}.")
    tokenizer = getattr(model, "tokenizer", None)
    vocab = model.module.get_output_embeddings().weight.shape[0] if hasattr(model.module, "get_output_embeddings") \
        and model.module.get_output_embeddings() is not None else model.module.config.vocab_size
    if target is None and metric is not None:
        return Target(ids=(), contrast_ids=None, score=score, text="metric", metric=metric)
    if target is None:
        if logits_last is None:
            raise TargetError("target=None needs the model's prediction; pass a target.")
        ids = (int(logits_last.argmax()),)
    else:
        ids = _tokens(tokenizer, target, vocab, "target")
    contrast_ids = None
    if contrast is not None:
        contrast_ids = _tokens(tokenizer, contrast, vocab, "contrast")
        if len(contrast_ids) != len(ids):
            raise TargetError(
                f"contrast={contrast!r} has {len(contrast_ids)} tokens but the target has {len(ids)}; "
                "they are compared token by token, so give them the same length."
            )
    def shown(token_ids: Sequence[int]) -> str:
        return tokenizer.decode(list(token_ids)) if tokenizer is not None else str(list(token_ids))

    return Target(ids=ids, contrast_ids=contrast_ids, score=score, text=shown(ids), metric=metric,
                  contrast_text="" if contrast_ids is None else shown(contrast_ids))
