"""Compiled passes (``compile=True``): integrated gradients' and saliency's rows run through the Hugging Face model
itself, under ``torch.compile``, in shapes from a few buckets.

>>> from attrib.methods.compiled import row_bucket, row_passes, token_bucket
>>> token_bucket(7), token_bucket(32), token_bucket(33)          # tokens: up to a multiple of 16
(16, 32, 48)
>>> row_bucket(3), row_bucket(52), row_bucket(4340)              # rows: less than a sixteenth more
(4, 52, 4352)
>>> row_passes(8680, 6468)               # (real rows, rows computed): equal passes within the planned 6468 rows
[(4340, 4352), (4340, 4352)]

The core's traced passes pause the forward in hooks (greenlets), which ``torch.compile`` cannot trace. A compiled
pass therefore calls the model directly: ``hf(inputs_embeds=points, attention_mask=..., position_ids=...,
logits_to_keep=n)``, scores its rows with the adapter's ``prep.scores`` (:mod:`attrib.methods.targets`: the same
``score``, ``contrast`` and multi-token targets as the traced pass) and takes ``torch.autograd.grad`` of the
summed scores with respect to the points only, the parameters frozen (``requires_grad`` off for the call,
restored in ``finally``). What is compiled (``CompileOptions.scope``):

- ``"auto"`` (the default): ``"model"`` for passes that replay CUDA graphs (small passes, whose time goes to
  launching kernels: one graph for the whole forward and one for the backward, where a graph per layer leaves
  the Python between layers on the critical path: H200, one prompt of 64 tokens, 52 rows, 13.6 ms against
  27–33), ``"layers"`` for the others where :mod:`attrib.models.layouts` knows the model (compile time that
  does not grow with depth), else ``"model"``.
- ``"layers"``: each decoder layer, for the call's length only (``_compiled_call_impl``, what ``module.compile()``
  sets, removed afterwards). Every layer shares one compiled graph per shape, so compile time does not grow with
  depth; the rest of the forward (rotary tables, the mask, the final norm and head, the scores) runs eagerly.
- ``"model"``: the whole forward as one graph (more fusion, one CUDA graph; compile time grows with depth).
- ``"none"``: the same direct calls, neither compiled nor padded (what bypassing the trace alone gives).

Shapes come from buckets, compiled with ``dynamic=False`` once per bucket and kept by torch for the process:
a pass's tokens are left-padded to a multiple of ``tokens`` (16; attention mask and position ids as attrib pads a
batch of prompts), and its rows are padded to a bucket (:func:`row_bucket`) with copies of its last row, whose
scores and gradients are dropped. The planner (:mod:`attrib.methods.planning`) stays in charge of the rows: a
planned pass is run as equal bucketed passes of at most the planned rows (scaled down by the token padding), and
its measured passes (on a CPU also its search for the fastest size) run eagerly, so compile time never enters its
readings, and so does the rest of a call that measured when it is less than a planned pass (a shape of that call
alone).
``mode`` (by default) is ``"reduce-overhead"`` (CUDA graphs) for CUDA passes of fewer than ``GRAPHED`` row-tokens,
whose time goes to launching kernels, and torch's default for larger ones and elsewhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, NoReturn

import torch

from ..core.devices import input_module, is_dispatched
from ..core.walk import parameters
from ..errors import MethodError
from ..models.language import LanguageModel, accepts
from ..models.sites import Site
from .compiled_patches import attention, liger
from .inputs import Inputs
from .passes import item_gradients
from .compiled_run import (Rest, compiled_buckets, pass_mode, planned_rows, record_bucket, recompile_limits,
                           resolve_scope, run_compiled)

__all__ = ["CompileOptions", "options_of", "check_supported", "gradient_passes", "token_bucket", "row_bucket",
           "row_passes", "compiled_buckets", "pass_mode"]

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCOPES = ("auto", "layers", "model", "none")
ATTENTIONS = ("auto", "model", "eager")
SHORT = 32      # tokens up to which attention="auto" runs the plain attention (H200, 32 tokens: 523 vs 477 prompts/s)
_CALL_KEYS = ("input_ids", "attention_mask", "position_ids", "logits_to_keep", "use_cache")

Gradients = Callable[[Inputs, Site, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class CompileOptions:
    """How ``compile=`` runs the passes (``compile=True`` is ``CompileOptions()``).

    >>> CompileOptions(scope="model").tokens
    16

    ``mode``: ``torch.compile``'s (``None``: ``"reduce-overhead"`` for CUDA passes of fewer than ``GRAPHED``
    rows × tokens, ``"default"`` for larger ones and elsewhere); ``scope``:
    ``"auto"`` (``"model"`` for CUDA-graph passes; else ``"layers"`` where a layout is known, else ``"model"``),
    ``"layers"``, ``"model"`` or ``"none"``;
    ``tokens``: the token bucket's multiple; ``liger``: Llama-family kernels of the ``liger-kernel`` package
    (RMSNorm, SwiGLU, RoPE; CUDA only) for the length of the call; ``attention``: ``"auto"`` (the model's
    plain ``"eager"`` attention, which the compiler fuses, for passes of at most ``SHORT`` tokens, where the
    fused kernels of SDPA waste most of their tiles, float64 excepted; the model's own above), ``"model"``
    (always the model's own) or ``"eager"`` (always the plain one).
    """

    mode: str | None = None
    scope: str = "auto"
    tokens: int = 16
    liger: bool = False
    attention: str = "auto"


def options_of(compile: Any) -> CompileOptions | None:
    """``compile=`` as options (``None``: the traced passes), or a clear error."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return CompileOptions()
    if not isinstance(compile, CompileOptions):
        raise MethodError(f"compile={compile!r:.60} must be True, False or an "
                          "attrib.methods.compiled.CompileOptions(...); pass compile=True.")
    if compile.mode is not None and compile.mode not in MODES:
        raise MethodError(f"CompileOptions(mode={compile.mode!r:.40}) is not one of {', '.join(MODES)}; pass one of "
                          "those, or None for the device's default.")
    if compile.scope not in SCOPES:
        raise MethodError(f"CompileOptions(scope={compile.scope!r:.40}) is not one of {', '.join(SCOPES)}.")
    if compile.attention not in ATTENTIONS:
        raise MethodError(f"CompileOptions(attention={compile.attention!r:.40}) is not one of "
                          f"{', '.join(ATTENTIONS)}.")
    if isinstance(compile.tokens, bool) or not isinstance(compile.tokens, int) or compile.tokens < 1:
        raise MethodError(f"CompileOptions(tokens={compile.tokens!r:.40}) must be a positive int (the multiple "
                          "prompts are padded to), e.g. 16.")
    return compile


def check_supported(method: str, model: Any, *, layer: Any = None, metric: Any = None, per_token: bool = False,
                    n_steps: Any = 1) -> None:
    """Refuse, before any pass, what compiled passes do not run (see docs/methods.md, "Compiled passes")."""
    def refuse(what: str, instead: str) -> NoReturn:
        raise MethodError(f"compile=True runs {method} on a Hugging Face language model's input embeddings, but "
                          f"{what}; {instead}, or leave compile out.")

    if not isinstance(model, LanguageModel):
        refuse(f"the model is {type(model).__name__}, not an attrib.LanguageModel",
               "wrap the Hugging Face model in attrib.LanguageModel(hf_model, tokenizer)")
    hf = model.module
    if model.is_encoder_decoder:
        refuse(f"{type(hf).__name__} is an encoder-decoder", "use a decoder-only model")
    if not accepts(hf, "inputs_embeds") or input_module(hf) is None:
        refuse(f"{type(hf).__name__} takes no inputs_embeds", "use a model whose forward takes inputs_embeds")
    if is_dispatched(hf):
        refuse(f"{type(hf).__name__} is dispatched over devices by accelerate", "load it on one device")
    if layer is not None:
        refuse(f"layer={getattr(layer, 'name', layer)!r:.40} attributes to a layer", "drop layer=")
    if metric is not None:
        refuse("metric= reads logits whose positions the token padding would change",
               "score a target (target=, contrast=, score=)")
    if per_token:
        refuse("per_token=True needs one backward per target token", "drop per_token")
    if isinstance(n_steps, str):
        refuse(f"n_steps={n_steps!r} (the float32 default) adapts its steps per prompt",
               "pass a fixed number of steps such as n_steps=50")


def token_bucket(tokens: int, multiple: int = 16) -> int:
    """``tokens`` rounded up to a multiple of ``multiple``."""
    return -(-tokens // multiple) * multiple


def row_bucket(rows: int) -> int:
    """``rows`` rounded up to a bucket: a power of two up to 8, above that sixteen buckets per doubling (m · 2^k
    with 16 ≤ m < 32), so that padding adds less than a sixteenth (eight buckets padded the big case's passes of
    4,352 rows to 4,608: 6% more work)."""
    if rows <= 8:
        return 1 << (rows - 1).bit_length()
    granule = 1 << max(0, rows.bit_length() - 5)
    return -(-rows // granule) * granule


def row_passes(rows: int, limit: int) -> list[tuple[int, int]]:
    """(real rows, rows computed) of the passes that run ``rows`` rows: the fewest equal passes of at most ``limit``
    rows, each padded to one shape, its bucket or ``limit`` itself if that is smaller."""
    limit = max(1, limit)
    passes = -(-rows // limit)
    size = -(-rows // passes)
    return [(min(size, rows - i * size), min(row_bucket(size), limit)) for i in range(passes)]


@contextlib.contextmanager
def gradient_passes(prep: Inputs, options: CompileOptions | None, remember: tuple[torch.nn.Module, Hashable],
                    batch_size: int | None, total: int) -> Iterator[Gradients]:
    """A function with :func:`~attrib.methods.passes.item_gradients`' signature for one method call: the traced
    passes when ``options`` is None, else compiled ones (``remember``: the planner's key of the call's rows;
    ``total``: the call's rows)."""
    if options is None:
        yield item_gradients
        return
    passes = _Passes(prep, options, remember, batch_size, total)
    hf = prep.model.module
    frozen = [(p, p.requires_grad) for p in parameters(hf)]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        with recompile_limits(), (liger(hf) if options.liger else contextlib.nullcontext()):
            yield passes.gradients
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)


class _Passes:
    """The compiled passes of one method call."""

    def __init__(self, prep: Inputs, options: CompileOptions, remember: tuple[torch.nn.Module, Hashable],
                 batch_size: int | None, total: int) -> None:
        self.prep, self.options, self.remember, self.batch_size = prep, options, remember, batch_size
        self.rest = Rest(total)
        hf = prep.model.module
        self.device = prep.x.device
        self.scope, self.layers = resolve_scope(hf, options.scope)
        self.auto = options.scope == "auto"
        if prep.site.envoy(prep.model).module is not input_module(hf):
            raise MethodError(f"compile=True passes the attributed values as inputs_embeds, but the embed site "
                              f"{prep.site.path} is not {type(hf).__name__}.get_input_embeddings(); leave compile out.")
        _, kwargs = prep.call(torch.arange(prep.n_items))
        self.mask = kwargs["attention_mask"]          # each item's, read per pass by index (no wait for the GPU)
        extra = sorted(set(kwargs) - set(_CALL_KEYS))
        if extra:
            raise MethodError(f"compile=True calls the model with inputs_embeds and the attention mask, but these "
                              f"inputs also carry {extra}; pass them without those, or leave compile out.")
        self.keep = {k: kwargs[k] for k in ("logits_to_keep", "use_cache") if k in kwargs}
        self.positions = accepts(hf, "position_ids")
        self.offset = getattr(prep.model, "position_offset", 0)     # RoBERTa-style tables count from padding_idx + 1
        self.padded = not bool(self.mask.all())

    def _planned(self, rows: int) -> int | None:
        return planned_rows(self.batch_size, rows, self.device, self.remember)

    def gradients(self, prep: Inputs, where: Site, value: torch.Tensor, item: torch.Tensor, n_out: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (R, 1), gradients (R, 1, ...)) as :func:`~attrib.methods.passes.item_gradients` gives them."""
        planned = self._planned(len(item))
        if self.rest.eager(planned) or self.scope == "none":
            scores, grad = self._pass(value, item, len(item), 0, compiled=False)
            self.rest.ran(len(item))
            return scores.unsqueeze(1), grad.unsqueeze(1)
        tokens = value.shape[1]
        bucket = token_bucket(tokens, self.options.tokens)
        limit = planned if self.batch_size is not None else max(1, planned * tokens // bucket)
        parts, start = [], 0
        for real, rows in row_passes(len(item), limit):
            index = torch.arange(start, start + rows, device=item.device).clamp(max=start + real - 1)
            parts.append(self._pass(value[index], item[index], real, bucket - tokens, compiled=True))
            start += real
        scores, grad = (torch.cat(t) for t in zip(*parts)) if len(parts) > 1 else parts[0]
        self.rest.ran(len(item))
        return scores.unsqueeze(1), grad.unsqueeze(1)

    def _pass(self, points: torch.Tensor, items: torch.Tensor, real: int, pad: int, compiled: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward and backward of ``points`` (rows of ``items``, left-padded by ``pad`` tokens): the first
        ``real`` rows' summed scores and gradients at the points."""
        prep, hf = self.prep, self.prep.model.module
        mask = self.mask[items.to(self.mask.device)]
        if pad:
            mask = torch.nn.functional.pad(mask, (pad, 0))
            points = torch.nn.functional.pad(points, (0, 0, pad, 0))
        leaf = points.detach().requires_grad_(True)
        call: dict[str, Any] = {"inputs_embeds": leaf, **self.keep}
        if isinstance(call.get("logits_to_keep"), torch.Tensor):     # positions kept, after the left padding
            call["logits_to_keep"] = call["logits_to_keep"] + pad
        masked = self.padded or pad > 0
        if masked:                   # as LanguageModel.call_kwargs: the mask, and positions from each row's first token
            call["attention_mask"] = mask
            if self.positions:
                call["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0) + self.offset
        plain = compiled and self._plain_attention(points.shape[1], points.dtype)
        with torch.enable_grad(), (attention(hf, "eager") if plain else contextlib.nullcontext()):
            mode = self._mode(len(items), points.shape[1])
            graphed = mode in ("reduce-overhead", "max-autotune") and self.device.type == "cuda"
            scope = "model" if self.auto and graphed else self.scope
            if compiled:
                if graphed:
                    torch.compiler.cudagraph_mark_step_begin()
                output = run_compiled(hf, call, mode, scope, self.layers)
                record_bucket(hf, (scope, mode, len(items), points.shape[1], masked))
            else:
                output = hf(**call)
            scores = prep.scores(output, items).sum(-1)
            (grad,) = torch.autograd.grad(scores[:real].sum(), leaf)
        scores, grad = scores[:real].detach(), grad[:real, pad:]
        if compiled and graphed:          # copies: a CUDA graph's outputs are overwritten by its next replay
            return scores.clone(), grad.clone()
        return scores, grad

    def _mode(self, rows: int, tokens: int) -> str:
        return pass_mode(self.options.mode, self.device, rows, tokens)

    def _plain_attention(self, tokens: int, dtype: torch.dtype) -> bool:
        """Whether a compiled pass of ``tokens`` positions in ``dtype`` runs the model's plain ("eager") attention.
        Not float64 by default: the plain attention of Hugging Face models takes its softmax in float32, where a
        float64 mask's minimum is -inf, so a padding row that sees no key becomes NaN and spreads (0 × NaN)."""
        choice = self.options.attention
        switchable = hasattr(self.prep.model.module, "set_attn_implementation")
        return choice == "eager" or (choice == "auto" and switchable and tokens <= SHORT and dtype != torch.float64)

