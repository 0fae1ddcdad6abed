"""A Hugging Face language model with its tokenizer: prompts in, the forward's arguments out.

>>> import attrib
>>> demo = attrib.load_demo_model(device="cpu")     # a LanguageModel around SmolLM2-135M
>>> model = attrib.LanguageModel(demo.module, demo.tokenizer)
>>> with model.trace("The capital of France is"):
...     logits = model.output.logits.save()
>>> model.tokenizer.decode(logits[0, -1].argmax())
' Paris'

Prompts may be a string, a list of strings (a left-padded batch; the attention mask is passed), a
``BatchEncoding``/dict, or a tensor of token ids. The caller's tokenizer is never changed: batches are
padded here, on the left, with the pad token (else the end-of-text token, else 0).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch

from ..core.model import Model
from ..errors import InputError

__all__ = ["LanguageModel", "accepts"]


def accepts(module: torch.nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes an argument called ``name``."""
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


class LanguageModel(Model):
    """A Hugging Face language model with its tokenizer (``None``: token ids only)."""

    def __init__(self, hf_model: torch.nn.Module, tokenizer: Any = None) -> None:
        super().__init__(hf_model)
        object.__setattr__(self, "tokenizer", tokenizer)

    @property
    def pad_id(self) -> int:
        """The token that pads a batch on the left: pad, else end-of-text, else 0."""
        for source in (self.tokenizer, getattr(self.module, "config", None)):
            for name in ("pad_token_id", "eos_token_id"):
                value = getattr(source, name, None)
                value = value[0] if isinstance(value, (list, tuple)) and value else value
                if isinstance(value, int):
                    return value
        return 0

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(getattr(self.module, "config", None), "is_encoder_decoder", False))

    def tokenize(self, prompts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask for one prompt or a left-padded batch, on the model's device."""
        if self.tokenizer is None:
            raise InputError(
                f"a text prompt was given, but this LanguageModel({type(self._module).__name__}) has no tokenizer; "
                "pass one as attrib.LanguageModel(hf_model, tokenizer) or give token ids."
            )
        batch = [prompts] if isinstance(prompts, str) else list(prompts)
        if not batch:
            raise InputError("got an empty list of prompts; pass at least one non-empty string.")
        rows = []
        for i, p in enumerate(batch):
            where = "the prompt" if isinstance(prompts, str) else f"prompt {i} of the list"
            if not isinstance(p, str) or not p.strip():
                raise InputError(f"{where} is empty ({p!r}); pass text with at least one token.")
            ids = list(self.tokenizer(p)["input_ids"])
            if not ids:
                raise InputError(f"{where} ({p!r}) tokenizes to no tokens; pass text with at least one token.")
            rows.append(ids)
        return self.pad(rows)

    def pad(self, rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Rows of token ids as one left-padded batch: ``input_ids`` and ``attention_mask``."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r):
                ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
                mask[i, width - len(r):] = 1
        device = self.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def call_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    keep: int | None = None) -> dict[str, Any]:
        """The forward's arguments: position ids that count each row's real tokens from 0 when a batch is
        left-padded (absolute position embeddings such as GPT-2's need them), only the last ``keep``
        positions' logits where the model allows it (``0``: all), and no key-value cache."""
        module = self._module
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
            if not bool(attention_mask.all()) and accepts(module, "position_ids"):
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if keep is not None and accepts(module, "logits_to_keep"):
            kwargs["logits_to_keep"] = keep
        if accepts(module, "use_cache"):
            kwargs["use_cache"] = False
        return kwargs

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            first, rest = args[0], args[1:]
            if isinstance(first, str) or (isinstance(first, (list, tuple)) and first
                                          and all(isinstance(x, str) for x in first)) or \
                    (isinstance(first, (list, tuple)) and not first):
                enc = self.tokenize(first)
                return rest, {**self.call_kwargs(enc["input_ids"], enc["attention_mask"]), **kwargs}
            if isinstance(first, Mapping):
                given = dict(first)
                if "input_ids" in given and given.get("attention_mask") is not None:   # left padding: position ids
                    given = {**self.call_kwargs(given["input_ids"], given["attention_mask"]), **given}
                    if "use_cache" not in first:
                        given.pop("use_cache", None)
                return rest, {**given, **kwargs}
            if isinstance(first, torch.Tensor):
                if first.numel() == 0:
                    raise InputError("model.trace() got an empty tensor of token ids; pass at least one token.")
                ids = first.unsqueeze(0) if first.dim() == 1 else first
                return rest, {"input_ids": ids, **kwargs}
        return super()._prepare(args, kwargs)
