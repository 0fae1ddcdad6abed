"""The input adapter: (model, inputs, target, contrast, score, metric) → what every method needs.

>>> import torch, attrib
>>> from attrib.methods.inputs import prepare
>>> net = attrib.Model(torch.nn.Linear(3, 2))
>>> prep = prepare(net, torch.ones(1, 3), target=1)
>>> prep.site.name, tuple(prep.x.shape), prep.single, prep.targets[0].ids
('input', (1, 3), True, (1,))

One rule decides how many results a method returns: **one result per input item**. A string, a 1-D tensor of
token ids, or a tensor / ``BatchEncoding`` with one row (``(1, T)`` ids, a plain model's ``(1, ...)`` input) is
one item and gives one result; a list of strings, or a tensor / ``BatchEncoding`` of several rows, gives a
list of results (also a list of one string gives a list of one).

- Language models (:class:`attrib.LanguageModel`): ``inputs`` is text, a list of texts, token ids ``(T,)`` /
  ``(N, T)`` (a tensor, a numpy integer array, a list of ints, or a list of rows of ints, left-padded; every id
  inside the vocabulary), or a ``BatchEncoding`` / dict with ``input_ids`` (and ``attention_mask``; right padding is
  moved to the left). The attributed values are the input embeddings (site ``embed``); the prompts are
  extended by the targets' teacher-forced continuation (for an encoder-decoder such as T5, the decoder's
  input is the start token and the continuation).
- Plain models (:class:`attrib.Model`): ``inputs`` is a tensor with a batch dimension; the attributed values
  are that tensor (site ``input``). ``target`` is a class id, one per row, a callable on the output, or None.

Devices: everything prepared here (ids, masks, the attributed values ``x``, target ids) is on the model's input
device, ``model.device`` (for a model dispatched over several devices by accelerate, where its input embedding
runs: :mod:`attrib.core.devices`). Token ids are moved there; a plain model's input tensor is moved there when the
model is dispatched, and refused on another device otherwise. ``call`` and ``scores`` take row indices from any
device.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.devices import is_dispatched
from ..core.model import Model
from ..errors import InputError, MethodError, TargetError, TrainModeWarning
from ..models.ids import as_ids
from ..models.language import LanguageModel
from ..models.sites import Site, first_tensor, site
from .batching import plan_key, run_rows
from .checks import check_batch_size, check_finite_inputs, check_grad_mode, has_dropout, nonfinite
from .targets import Target, logits_of, resolve_targets, token_scores

__all__ = ["Inputs", "prepare", "encode", "check_batch_size", "check_grad_mode", "check_finite_inputs", "nonfinite"]


@dataclass
class Inputs:
    """A batch of items ready for a method."""

    model: Model
    site: Site                       # where the attributed values live: "embed" or "input"
    x: torch.Tensor                  # (items, ...) their values
    targets: list[Target]            # one per item
    labels: list[list[str]]          # per item: the labels of its positions (padding left out)
    keep: list[torch.Tensor]         # per item: the indices along dim 1 of x that ``labels`` name
    single: bool                     # the caller gave one item: return one result
    ids: torch.Tensor | None         # (items, n) target ids (None for a metric)
    contrast: torch.Tensor | None    # (items, n) contrast ids
    call_args: Callable[[torch.Tensor], tuple[tuple, dict]]
    output_labels: list[list[str]]   # per item: its target tokens
    n_prompt: int = 0                # positions of the (padded) prompts in x; the rest is continuation

    @property
    def n_items(self) -> int:
        return self.x.shape[0]

    @property
    def n_out(self) -> int:
        """Target tokens per item (1 for a metric)."""
        return 1 if self.ids is None else self.ids.shape[1]

    def call(self, items: torch.Tensor) -> tuple[tuple, dict]:
        """The forward's arguments for rows that copy ``items`` (one row per entry), on the model's input device
        (``items`` may come from any device)."""
        return self.call_args(items.to(self.x.device))

    def scores(self, output: Any, items: torch.Tensor) -> torch.Tensor:
        """(rows, n_out): each row's score of its item's target tokens (a metric: one column)."""
        metric = self.targets[0].metric
        if metric is not None:
            logits = output.logits if hasattr(output, "logits") else first_tensor(output)
            value = metric(logits, items) if takes_items(metric) else metric(logits)
            rows = items.shape[0]
            if not isinstance(value, torch.Tensor) or value.shape != (rows,):
                got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise TargetError(
                    f"metric={_name(metric)} must return one score per row of its logits, shape (batch,), but for "
                    f"logits of shape {tuple(logits.shape)} ({self._copies(rows)}) it returned {got}; reduce the "
                    "other dimensions, e.g. lambda logits: logits[:, -1, token_id].")
            return value.unsqueeze(1)
        logits = logits_of(output)                   # on the device the output lives on: the ids go there
        items = items.to(self.ids.device)
        contrast = None if self.contrast is None else self.contrast[items].to(logits.device)
        return token_scores(logits, self.ids[items].to(logits.device), contrast, self.targets[0].score)

    def describe(self, i: int) -> str:
        return self.targets[i].describe()

    def _copies(self, rows: int) -> str:
        """How a pass's ``rows`` relate to the caller's inputs, for messages."""
        yours = f"your {self.n_items} input{'s' if self.n_items > 1 else ''}"
        if rows == self.n_items:
            return f"{yours}, one row each"
        return f"{yours} copied into {rows} rows, one per interpolation step, noisy sample or patch"


def takes_items(metric: Callable) -> bool:
    """Whether ``metric`` has a second parameter without default (``metric(logits, items)``): it then gets the
    input item (the prompt, or the pair) of each row, as a (rows,) tensor of indices."""
    try:
        params = list(inspect.signature(metric).parameters.values())
    except (TypeError, ValueError):         # builtins without a signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def prepare(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
            metric: Callable | None = None, batch_size: int | None = None, name: str = "inputs",
            check_count: Callable[[int, bool], None] | None = None) -> Inputs:
    """Resolve inputs and targets once, for any method (see the module docstring). ``batch_size``: rows per
    forward of the prediction pass that ``target=None`` needs (``None``: all, halved on out-of-memory);
    ``name``: the argument that ``inputs`` came in, for messages; ``check_count(items, single)``: called as soon
    as the number of items is known, before targets are resolved (e.g. to refuse a count that does not match)."""
    if isinstance(model, Model) and model.module.training and has_dropout(model.module):
        warnings.warn(
            f"the model ({type(model.module).__name__}) is in train mode, so dropout makes every forward random "
            "and two identical calls give different attributions; call model.module.eval() first.",
            TrainModeWarning, stacklevel=3)
    if isinstance(model, LanguageModel):
        return _language(model, inputs, target, contrast, score, metric, batch_size, name, check_count)
    if isinstance(model, Model):
        return _plain(model, inputs, target, contrast, score, metric, batch_size, check_count)
    raise MethodError(f"model must be an attrib.Model or attrib.LanguageModel, got {type(model).__name__}; wrap "
                      "it with attrib.Model(module) or attrib.LanguageModel(hf_model, tokenizer).")


# -- language models ----------------------------------------------------------------------------------
def encode(model: LanguageModel, inputs: Any, name: str) -> tuple[dict[str, torch.Tensor], bool]:
    """(left-padded ids and mask, one item?) for any accepted form of prompts (``name``: the argument), every id
    inside the model's vocabulary."""
    enc, single = _encoded(model, inputs, name)
    model.check_ids(enc["input_ids"], name)
    return enc, single


def _encoded(model: LanguageModel, inputs: Any, name: str) -> tuple[dict[str, torch.Tensor], bool]:
    if isinstance(inputs, str):
        return model.tokenize(inputs), True
    given = as_ids(inputs, name)
    if isinstance(given, list):                     # rows of token ids: a left-padded batch, one result per row
        return model.pad(given), False
    inputs = inputs if given is None else given
    if isinstance(inputs, (list, tuple)):
        return model.tokenize(list(inputs)), False      # strings (as_ids refused any other list); [] is refused
    if isinstance(inputs, Mapping):
        if "input_ids" not in inputs:
            hint = (" (precomputed inputs_embeds are not taken: the methods compute and attribute the embeddings "
                    "of the ids themselves)") if "inputs_embeds" in inputs else ""
            raise InputError(f"a dict of inputs needs 'input_ids', got keys {sorted(inputs)}{hint}; pass the token "
                             "ids.")
        ids = torch.as_tensor(inputs["input_ids"])
        mask = inputs.get("attention_mask")
        ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(ids.shape)
        extra = {}
        for key, value in inputs.items():       # token_type_ids and the like travel with the ids
            if key in ("input_ids", "attention_mask"):
                continue
            if not isinstance(value, torch.Tensor) or value.reshape(-1).shape[0] != ids.numel():
                raise InputError(f"the inputs' {key!r} is not a tensor of the ids' shape {tuple(ids.shape)}; pass "
                                 "only per-token tensors with the ids (or call the model with model.trace).")
            extra[key] = value.reshape(ids.shape).to(model.device)
    elif isinstance(inputs, torch.Tensor):
        ids = inputs.unsqueeze(0) if inputs.dim() == 1 else inputs
        mask = torch.ones_like(ids)
        extra = {}
    else:
        raise InputError(f"a language model takes text, a list of texts, token ids or a BatchEncoding, got "
                         f"{type(inputs).__name__}.")
    if ids.is_floating_point() or ids.is_complex() or ids.dim() != 2 or ids.numel() == 0:
        raise InputError(f"token ids must be a non-empty integer tensor of shape (T,) or (N, T), got {ids.dtype} "
                         f"of shape {tuple(ids.shape)}.")
    ids, mask = ids.to(model.device), mask.to(model.device)
    if not bool(mask[:, -1].all()):                     # right padding: move it to the left
        rows = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        if any(not r for r in rows):
            raise InputError("an input row has no tokens (its attention mask is all zeros).")
        enc = model.pad(rows)
        for key, value in extra.items():
            moved = torch.zeros_like(value)
            for i, m in enumerate(mask.bool()):
                moved[i, value.shape[1] - int(m.sum()):] = value[i, m]
            enc[key] = moved
        return enc, ids.shape[0] == 1
    return {"input_ids": ids, "attention_mask": mask.long(), **extra}, ids.shape[0] == 1


def _vocab(model: Model) -> int | None:
    out = getattr(model.module, "get_output_embeddings", lambda: None)()
    if out is not None and getattr(out, "weight", None) is not None:
        return out.weight.shape[0]
    return getattr(getattr(model.module, "config", None), "vocab_size", None)


def token_strings(model: LanguageModel, ids: Sequence[int]) -> list[str]:
    """Labels that join back into the decoded text (:mod:`attrib.models.text`)."""
    return model.token_labels(ids)


def _predicted(model: Model, call: Callable[[torch.Tensor], tuple[tuple, dict]], n_items: int,
               batch_size: int | None, like: torch.Tensor) -> torch.Tensor:
    """(items, classes): each item's logits at its last position, from no-grad forwards of ``batch_size`` rows
    (``None``: all at once, halved on out-of-memory, like every batched pass)."""
    def run(rows: torch.Tensor) -> torch.Tensor:
        args, kwargs = call(rows)
        with torch.no_grad():
            return logits_of(model.module(*args, **kwargs))[:, -1]

    return run_rows(run, n_items, lambda rows: rows, n_items, batch_size, like=like,
                    remember=plan_key(model, ("predict",), like))


def _language(model: LanguageModel, inputs: Any, target: Any, contrast: Any, score: str,
              metric: Callable | None, batch_size: int | None, name: str,
              check_count: Callable[[int, bool], None] | None) -> Inputs:
    enc, single = encode(model, inputs, name)
    if check_count is not None:
        check_count(enc["input_ids"].shape[0], single)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    n_items, n_prompt = ids.shape
    seq2seq = model.is_encoder_decoder
    start = getattr(model.module.config, "decoder_start_token_id", None) if seq2seq else None
    if seq2seq and start is None:
        raise InputError(f"{type(model.module).__name__} is an encoder-decoder without a decoder_start_token_id in "
                         "its config; set it.")
    last = None
    if target is None and metric is None:
        def call(rows: torch.Tensor) -> tuple[tuple, dict]:
            first = {"decoder_input_ids": torch.full((len(rows), 1), start, device=ids.device)} if seq2seq else {}
            return (), {**model.call_kwargs(ids[rows], mask[rows], keep=1), **first,
                        **{k: v[rows] for k, v in extra.items()}}
        last = _predicted(model, call, n_items, batch_size, ids)
    targets = resolve_targets(model, n_items, last, target, contrast, score, metric, model.tokenizer, _vocab(model))
    cont = torch.tensor([t.continuation() for t in targets], dtype=ids.dtype, device=ids.device)
    cont = cont.reshape(n_items, -1)
    if seq2seq:
        dec = torch.cat([torch.full((n_items, 1), start, dtype=ids.dtype, device=ids.device), cont], 1)
        full_ids, full_mask = ids, mask
    else:
        dec = None
        full_ids = torch.cat([ids, cont], 1)
        full_mask = torch.cat([mask, torch.ones_like(cont)], 1)
        n_cont = cont.shape[1]
        for key, value in extra.items():    # continue each per-token input over the continuation
            step = torch.arange(1, n_cont + 1, device=value.device) if key == "position_ids" else 0
            extra[key] = torch.cat([value, value[:, -1:].expand(-1, n_cont) + step], 1)
    model.check_length(full_ids.shape[1], "the prompt and target" if cont.shape[1] else "the prompt")
    where = site(model, "embed")
    with torch.no_grad():
        x = first_tensor(where.envoy(model).module(full_ids)).detach()
    keep = [m[:n_prompt].nonzero().flatten() for m in mask]
    labels = [token_strings(model, row[k].tolist()) for row, k in zip(ids, keep)]
    n_keep = 0 if targets[0].metric is not None else targets[0].n_tokens

    def call_args(items: torch.Tensor) -> tuple[tuple, dict]:
        kwargs = {**model.call_kwargs(full_ids[items], full_mask[items], keep=n_keep),
                  **{k: v[items] for k, v in extra.items()}}
        if dec is not None:
            kwargs["decoder_input_ids"] = dec[items]
        return (), kwargs

    metric_only = targets[0].metric is not None
    target_ids = None if metric_only else torch.tensor([t.ids for t in targets], device=ids.device)
    contrast_ids = None if metric_only or targets[0].contrast_ids is None else \
        torch.tensor([t.contrast_ids for t in targets], device=ids.device)
    return Inputs(model, where, x, targets, labels, keep, single, target_ids, contrast_ids, call_args,
                  [token_strings(model, t.ids) for t in targets], n_prompt)


# -- plain models -------------------------------------------------------------------------------------
def _plain(model: Model, inputs: Any, target: Any, contrast: Any, score: str, metric: Callable | None,
           batch_size: int | None, check_count: Callable[[int, bool], None] | None) -> Inputs:
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
        raise InputError(f"a text prompt ({inputs!r:.60}) was given to attrib.Model({type(model.module).__name__}), "
                         "which has no tokenizer; wrap the model with attrib.LanguageModel(hf_model, tokenizer) or "
                         "pass tensors.")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.numel() == 0:
        got = f"shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise InputError(f"attrib.Model({type(model.module).__name__}) takes a non-empty tensor with a batch "
                         f"dimension first, got {got}; for one input of shape {got[6:] or '(...)'} pass x[None].")
    device = model.device
    if inputs.device != device and not is_dispatched(model.module):
        raise InputError(f"the input tensor is on {inputs.device}, but the model is on {device}; move it with "
                         f".to({str(device)!r}) first.")
    x = inputs.detach().to(device)                # a dispatched model's inputs go where its first module runs
    n = x.shape[0]
    if check_count is not None:
        check_count(n, n == 1)
    # the classes each row predicts (for target=None), else how many there are (from one row)
    last = _predicted(model, lambda rows: ((x[rows],), {}), n if target is None and metric is None else 1,
                      batch_size, x)
    targets = resolve_targets(model, n, last, target, contrast, score, metric, None, last.shape[-1], language=False)
    if targets[0].metric is None and targets[0].n_tokens != 1:
        raise TargetError(f"target={target!r:.60}: a plain model takes one class id per row (an int, or a list of "
                          f"{n} ints), or a callable.")
    metric_only = targets[0].metric is not None
    ids = None if metric_only else torch.tensor([t.ids for t in targets], device=x.device)
    contrast_ids = None if metric_only or targets[0].contrast_ids is None else \
        torch.tensor([t.contrast_ids for t in targets], device=x.device)
    features = x.dim() == 2                       # tabular rows: one label per feature (token ids: the ids)
    if features and not x.is_floating_point():
        labels = [[str(int(v)) for v in row] for row in x]
    else:
        labels = [[str(i) for i in range(x.shape[1])] if features else [] for _ in range(n)]
    keep = [torch.arange(x.shape[1]) if features else torch.zeros(0, dtype=torch.long)] * n
    return Inputs(model, site(model, "input"), x, targets, labels, keep, n == 1, ids, contrast_ids,
                  lambda items: ((x[items],), {}), [[t.text] for t in targets])
