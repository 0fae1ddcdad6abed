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

import functools
import inspect
from typing import Any, Mapping, Sequence

import torch

from ..core.devices import is_dispatched
from ..core.model import Model
from ..errors import InputError
from .ids import as_ids, short as _short
from .text import token_labels

__all__ = ["LanguageModel", "accepts", "position_limit"]

# names of learned absolute position embeddings (GPT-2's wpe, BERT's, OPT's and BART's): a token past their
# last row indexes out of range; rotary (Llama) and relative (T5) positions have no such hard limit
_POSITION_TABLES = ("wpe", "position_embeddings", "embed_positions", "pos_embed", "pos_embedding")


def _parameters(module: torch.nn.Module) -> Mapping[str, inspect.Parameter]:
    """The parameters of ``module.forward`` (none if it has no signature). A class's forward is read once (every
    call of a method asks, 11 times: 2.5 ms a call on a busy 2-core CPU); a forward set on the instance
    (accelerate's wrapper, which holds the module) is read each time, so that no module is kept alive."""
    forward = module.forward
    function = getattr(forward, "__func__", None)
    if function is not None and function is getattr(type(module), "forward", None):
        return _signature_of(function)         # the class's own: holds no module
    try:
        return inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return {}


@functools.lru_cache(maxsize=256)
def _signature_of(function: Any) -> Mapping[str, inspect.Parameter]:
    try:
        parameters = dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return {}
    parameters.pop(next(iter(parameters), None), None)      # ``self``, bound on the instance
    return parameters


def accepts(module: torch.nn.Module, name: str) -> bool:
    """Whether ``module.forward`` takes an argument called ``name``."""
    return name in _parameters(module)


def keeps_by_index(module: torch.nn.Module) -> bool:
    """Whether ``module.forward`` takes ``logits_to_keep`` as a tensor of positions as well as an int (Hugging Face
    models since transformers 4.50 say so in its annotation)."""
    parameter = _parameters(module).get("logits_to_keep")
    return parameter is not None and "Tensor" in str(parameter.annotation)


def position_limit(module: torch.nn.Module) -> tuple[int, str] | None:
    """(positions, module path) of the model's learned absolute position table, or None when it has none."""
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in _POSITION_TABLES:
            offset = getattr(sub, "offset", 0)          # OPT and BART keep two rows before position 0
            return sub.num_embeddings - (offset if isinstance(offset, int) else 0), name
    return None


class LanguageModel(Model):
    """A Hugging Face language model with its tokenizer (``None``: token ids only)."""

    def __init__(self, hf_model: torch.nn.Module, tokenizer: Any = None) -> None:
        super().__init__(hf_model)
        if tokenizer is not None and not callable(tokenizer):
            if isinstance(tokenizer, str):
                what, example = "is a name, not a tokenizer", f"from_pretrained({_short(tokenizer, 30)})"
            else:
                what, example = f"({type(tokenizer).__name__}) is not a tokenizer (it cannot be called on text)", \
                    "from_pretrained(name)"
            raise InputError(f"tokenizer={_short(tokenizer)} {what}; pass the tokenizer object (e.g. "
                             f"transformers.AutoTokenizer.{example}), or None for token ids only.")
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
    def position_offset(self) -> int:
        """Where a sequence's first position id lies: 0, or ``padding_idx + 1`` for position tables that keep a row
        for padding (RoBERTa, XLM-R and other fairseq-born models count their positions from there, and take the
        ids they are given as they are)."""
        cached = self.__dict__.get("_position_offset")
        if cached is None:
            cached = next((int(sub.padding_idx) + 1 for name, sub in self._module.named_modules()
                           if name.endswith("position_embeddings") and isinstance(sub, torch.nn.Embedding)
                           and sub.padding_idx is not None), 0)
            object.__setattr__(self, "_position_offset", cached)
        return cached

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
            if not isinstance(p, str) or not p:
                raise InputError(f"{where} is empty ({p!r}); pass text with at least one token.")
            ids = list(self.tokenizer(p)["input_ids"])
            if not ids:
                what = " is whitespace-only and" if not p.strip() else ""
                raise InputError(f"{where} ({_short(p)}){what} tokenizes to no tokens with this tokenizer; pass "
                                 "text with at least one token.")
            rows.append(ids)
        return self.pad(rows)

    def token_labels(self, ids: Sequence[int]) -> list[str]:
        """One label per token id that joins back into the decoded text: a character split over several
        byte-level tokens (an emoji) is labelled on the token that completes it (:mod:`attrib.models.text`)."""
        return token_labels(self.tokenizer, ids)

    @property
    def max_positions(self) -> tuple[int, str] | None:
        """(positions, module path) of a learned absolute position table that caps a prompt's length, else None."""
        cached = self.__dict__.get("_position_limit", False)
        if cached is False:
            cached = position_limit(self._module)
            object.__setattr__(self, "_position_limit", cached)
        return cached

    def check_length(self, n_tokens: int, what: str) -> None:
        """Refuse ``n_tokens`` positions past the model's learned position table (it would index out of range)."""
        limit = self.max_positions
        if limit is not None and n_tokens > limit[0]:
            verb = "take" if " and " in what else "takes"
            raise InputError(f"{what} {verb} {n_tokens} tokens, more than the model's context of {limit[0]} "
                             f"positions (the rows of its position embedding {limit[1]}); shorten it to at most "
                             f"{limit[0]} tokens.")

    def check_ids(self, ids: torch.Tensor, what: str) -> None:
        """Refuse token ids outside the input embedding's rows (torch would raise IndexError in the model)."""
        try:
            embedding = self._module.get_input_embeddings()
        except (AttributeError, NotImplementedError):
            return
        size = getattr(embedding, "num_embeddings", None)
        if not isinstance(size, int) or ids.device.type == "meta" or ids.numel() == 0 or ids.is_floating_point() or \
                ids.is_complex() or ids.dtype == torch.bool:
            return
        # one reduction and one read of two numbers (on a GPU, one wait; the element-wise test ran 4 kernels)
        low, high = torch.stack(torch.aminmax(ids)).tolist()
        if low >= 0 and high < size:
            return
        bad = (ids < 0) | (ids >= size)
        index = [int(i) for i in bad.nonzero()[0].tolist()]
        at = f"position {index[-1]}" + (f" of row {index[0]}" if len(index) > 1 and ids.shape[0] > 1 else "")
        raise InputError(f"token id {int(ids[tuple(index)])} at {at} of {what} (token ids of shape "
                         f"{tuple(ids.shape)}) is outside the vocabulary of {size} tokens (the rows of the input "
                         f"embedding); pass ids from 0 to {size - 1}.")

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
                kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + self.position_offset
        if keep is not None and accepts(module, "logits_to_keep"):
            # the last positions as a tensor of indices where the model takes one: its hidden states are then
            # gathered into a contiguous (rows, keep, d) block, while the int's slice is a strided view that
            # torch's matmul does not fold into one GEMM when it requires grad (a batched product of one row per
            # sequence that reads the whole head once per row: 40 ms of a 4,352-row pass on an H200, 10× the GEMM)
            # (decoder-only: an encoder-decoder keeps positions of its decoder's inputs, which are not these)
            length = input_ids.shape[-1]
            # (and on one device: a dispatched model slices on its last card, where an index made here is not)
            by_index = (0 < keep <= length and not self.is_encoder_decoder and not is_dispatched(module)
                        and keeps_by_index(module))
            kwargs["logits_to_keep"] = (torch.arange(length - keep, length, device=input_ids.device)
                                        if by_index else keep)
        if accepts(module, "use_cache"):
            kwargs["use_cache"] = False
        return kwargs

    def _prepare(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        given = args[0] if args else None
        args, kwargs = self._prepare_inputs(args, kwargs)
        ids = kwargs.get("input_ids")
        if isinstance(ids, torch.Tensor):
            self.check_ids(ids, "model.trace()'s input_ids")
        if self.max_positions is not None:
            self._check_positions(given, kwargs)
        return args, kwargs

    def _check_positions(self, given: Any, kwargs: dict) -> None:
        """A prompt longer than a learned position table: one clear error instead of torch's IndexError."""
        for key, axis in (("input_ids", -1), ("inputs_embeds", -2), ("decoder_input_ids", -1)):
            value = kwargs.get(key)
            if not isinstance(value, torch.Tensor) or value.dim() < -axis or value.numel() == 0:
                continue
            n = value.shape[axis]
            positions = kwargs.get("position_ids") if key != "decoder_input_ids" else None
            if isinstance(positions, torch.Tensor) and positions.numel():
                n = int(positions.max()) + 1
            if isinstance(given, str) and key == "input_ids":
                what = f"the prompt {_short(given)}"
            elif isinstance(given, (list, tuple)) and given and all(isinstance(p, str) for p in given) and \
                    key == "input_ids":
                what = f"the longest of the {len(given)} prompts"
            else:
                what = f"model.trace()'s {key} of shape {tuple(value.shape)}"
            self.check_length(n, what)

    def _prepare_inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            first, rest = args[0], args[1:]
            ids = as_ids(first, "model.trace()'s input")
            if isinstance(ids, list):                   # rows of token ids: a left-padded batch
                enc = self.pad(ids)
                return rest, {**self.call_kwargs(enc["input_ids"], enc["attention_mask"]), **kwargs}
            first = first if ids is None else ids.to(self.device)
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
