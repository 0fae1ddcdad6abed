"""Saliency: the gradient of a target score with respect to the input (embeddings), and its relatives.

>>> import torch, attrib
>>> from attrib.methods.saliency import saliency
>>> net = attrib.Model(torch.nn.Linear(3, 2, bias=False))
>>> with torch.no_grad():
...     _ = net.module.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.0, 1.0, 0.0]]))
>>> x = torch.tensor([[2.0, 1.0, 1.0]])
>>> saliency(net, x, target=0).values.tolist()              # d out[0] / dx: the weight's first row
[[1.0, -2.0, 3.0]]
>>> saliency(net, x, target=0, mode="grad_x_input").scores.tolist()
[[2.0, -2.0, 3.0]]

- Language models (:class:`attrib.LanguageModel`, prompts as text): the gradient is taken at the output of the
  input embedding module. ``mode="grad"``: ``.values`` is the signed gradient (tokens × hidden) and ``.scores``
  its L2 norm per token (Simonyan et al. 2014, "Deep Inside Convolutional Networks"). ``mode="grad_x_input"``:
  gradient × embedding, summed per token (Shrikumar et al. 2016, "Not Just a Black Box"). A list of prompts
  runs as one left-padded batch and gives one :class:`Attribution` per prompt, padding removed.
- Generic modules (:class:`attrib.Model`): the gradient with respect to the float input tensor itself;
  ``target`` is a class index (or one per row), ``None`` (each row's predicted class) or a callable on the
  output returning (batch,) scores. ``.values`` has the input's shape; ``.scores`` is ``|values|`` (``grad``)
  or ``values`` (``grad_x_input``), element by element.
- ``smooth=N``: SmoothGrad (Smilkov et al. 2017) over N noisy copies of each input, σ = ``noise`` × (max − min)
  of that input, all copies in one batched pass; ``smooth_type="smoothgrad"`` averages the per-sample
  attributions, ``"smoothgrad_sq"`` their squares, ``"vargrad"`` takes their variance (Adebayo et al. 2018,
  "Sanity Checks for Saliency Maps"), as Captum's ``NoiseTunnel``. Scores are reduced from the smoothed values.
  Noise is ``torch.normal(0, σ)`` of shape (inputs × samples, ...) in the input's dtype, from the global RNG or
  from a generator seeded with ``seed``: the draws of Captum's ``NoiseTunnel`` under the same seed (Captum
  makes σ in the default dtype, so set it to the input's dtype to compare).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..core.release import releasing
from ..core.model import LanguageModel, Model
from ..errors import MethodError, TargetError
from .common import _accepts, embedding_envoy, first_tensor, gradient_at, lm_kwargs, prepare
from .result import Attribution
from .targets import SCORES

__all__ = ["saliency", "MODES", "SMOOTH_TYPES"]

MODES = ("grad", "grad_x_input")
SMOOTH_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


@releasing
def saliency(model: Model, inputs: str | Sequence[str] | torch.Tensor, *, target: Any = None,
             contrast: Any = None, score: str = "logit", metric: Callable[[Any], torch.Tensor] | None = None,
             mode: str = "grad", smooth: int = 0, noise: float = 0.15, smooth_type: str = "smoothgrad",
             seed: int | None = None) -> Attribution | list[Attribution]:
    """Gradient (``mode="grad"``) or gradient × input (``"grad_x_input"``) of the target score; see the module
    docstring. Returns one :class:`Attribution`, or a list of them for a list of prompts."""
    _check(mode, smooth, noise, smooth_type, seed)
    options = dict(mode=mode, smooth=smooth, noise=noise, smooth_type=smooth_type, seed=seed)
    if isinstance(model, LanguageModel):
        if isinstance(inputs, torch.Tensor):
            raise MethodError("saliency on an attrib.LanguageModel takes prompts as text (a string or a list of "
                              "strings), so that the gradient is taken at the embedding layer's output.")
        return _language(model, inputs, target, contrast, score, metric, **options)
    if not isinstance(model, Model):
        raise MethodError(f"saliency needs an attrib.Model or attrib.LanguageModel, got {type(model).__name__}.")
    return _generic(model, inputs, target, contrast, score, metric, **options)


def _check(mode: str, smooth: int, noise: float, smooth_type: str, seed: int | None) -> None:
    if mode not in MODES:
        raise MethodError(f"mode={mode!r} is not one of {', '.join(MODES)}.")
    if smooth_type not in SMOOTH_TYPES:
        raise MethodError(f"smooth_type={smooth_type!r} is not one of {', '.join(SMOOTH_TYPES)}.")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0:
        raise MethodError(f"smooth={smooth!r} must be a whole number of noisy samples, 0 (no smoothing) or more.")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise MethodError(f"noise={noise!r} must be a finite number ≥ 0 (σ as a fraction of the input's range).")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise MethodError(f"seed={seed!r} must be an int or None (None: the global torch RNG).")


def _noisy(x: torch.Tensor, n: int, noise: float, valid: torch.Tensor | None, seed: int | None) -> torch.Tensor:
    """Each row of ``x`` ``n`` times (rows = inputs × samples) plus N(0, σ²), σ = noise × (max − min) of that row
    over its ``valid`` elements; drawn as Captum's NoiseTunnel draws it (``torch.normal(0, std)``)."""
    flat = x.reshape(x.shape[0], -1)
    ok = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.expand_as(x).reshape(flat.shape)
    sigma = noise * (flat.masked_fill(~ok, -math.inf).amax(1) - flat.masked_fill(~ok, math.inf).amin(1))
    rows = x.repeat_interleave(n, 0)
    std = sigma.repeat_interleave(n).view(-1, *(1,) * (x.dim() - 1)).expand_as(rows).contiguous()
    generator = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    return rows + torch.normal(0.0, std, generator=generator)


def _attribute(grad: torch.Tensor, rows: torch.Tensor, n: int, opts: dict) -> torch.Tensor:
    """Per-sample attributions (gradient, or gradient × the input the sample saw), then smoothed over samples."""
    attr = grad * rows if opts["mode"] == "grad_x_input" else grad
    if not opts["smooth"]:
        return attr
    attr = attr.view(-1, n, *attr.shape[1:])
    mean = attr.mean(1)
    if opts["smooth_type"] == "smoothgrad":
        return mean
    mean_sq = (attr * attr).mean(1)
    return mean_sq if opts["smooth_type"] == "smoothgrad_sq" else mean_sq - mean * mean


def _info(opts: dict) -> dict[str, Any]:
    return {k: v for k, v in opts.items() if v is not None}


def _language(model: LanguageModel, prompts: str | Sequence[str], target: Any, contrast: Any, score: str,
              metric: Callable | None, **opts: Any) -> Attribution | list[Attribution]:
    p = prepare(model, prompts, target, contrast, score, metric)
    embedding = embedding_envoy(model)
    with torch.no_grad():
        x = first_tensor(embedding.module(p.input_ids))
    n = opts["smooth"] or 1
    rows = _noisy(x, n, opts["noise"], p.attention_mask.bool().unsqueeze(-1), opts["seed"]) if opts["smooth"] else x
    ids, mask = p.input_ids.repeat_interleave(n, 0), p.attention_mask.repeat_interleave(n, 0)
    kwargs = lm_kwargs(model, ids, mask, p.n_out)
    if _accepts(model.module, "position_ids"):  # left padding: count each row's positions from its first token
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)

    def score_fn(output: Any) -> torch.Tensor:
        logits = output.logits if hasattr(output, "logits") else first_tensor(output)
        return torch.cat([t.scores(logits[i * n:(i + 1) * n]) for i, t in enumerate(p.targets)])

    _, grad = gradient_at(model, embedding, rows, score_fn, (), kwargs)
    values = _attribute(grad, rows, n, opts)
    results = []
    for i, tgt in enumerate(p.targets):
        v = values[i, :p.n_prompt][~p.pad[i]]
        scores = v.sum(-1) if opts["mode"] == "grad_x_input" else v.norm(dim=-1)
        results.append(Attribution(tokens=p.tokens[i], scores=scores, values=v, delta=None,
                                   target=tgt.describe(), method="saliency", info=_info(opts)))
    return results[0] if isinstance(prompts, str) else results


def _indices(value: Any, rows: int, what: str) -> torch.Tensor:
    index = torch.as_tensor(value).reshape(-1)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TargetError(f"{what} must be a class index (an int, or one int per input row), got {value!r}.")
    if index.numel() not in (1, rows):
        raise TargetError(f"{what} has {index.numel()} class indices but the input has {rows} rows; "
                          "give one, or one per row.")
    return index.expand(rows)


def _generic(model: Model, x: Any, target: Any, contrast: Any, score: str, metric: Callable | None,
             **opts: Any) -> Attribution:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise MethodError("saliency on an attrib.Model needs a float input tensor with a batch dimension.")
    if not x.is_floating_point():
        raise MethodError(f"the input is {x.dtype}, which has no gradient; attribute to an embedding layer instead "
                          "(for a language model: attrib.LanguageModel(hf_model, tokenizer) and text prompts).")
    if score not in SCORES:
        raise TargetError(f"score={score!r} is not one of {', '.join(SCORES)}.")
    fn = metric if metric is not None else target if callable(target) else None
    if fn is not None and contrast is not None:
        raise TargetError("contrast= needs a class index target; with a callable, subtract inside the callable.")
    n, batch = opts["smooth"] or 1, x.shape[0]
    if fn is None and target is None:  # each row's predicted class on the clean input
        with torch.no_grad():
            out = model.module(x)
        target = (out.logits if hasattr(out, "logits") else first_tensor(out)).reshape(batch, -1).argmax(-1)
    picks = [] if fn is not None else [_indices(v, batch, w).to(x.device).repeat_interleave(n)
                                       for v, w in ((target, "target"), (contrast, "contrast")) if v is not None]
    rows = _noisy(x.detach(), n, opts["noise"], None, opts["seed"]) if opts["smooth"] else x.detach().clone()

    def score_fn(output: Any) -> torch.Tensor:
        if fn is not None:
            value = fn(output)
            if not isinstance(value, torch.Tensor) or value.shape != (rows.shape[0],):
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TargetError(f"the target callable must return a tensor of shape (batch,) = ({rows.shape[0]},), "
                                  f"got {got}.")
            return value
        out = (output.logits if hasattr(output, "logits") else first_tensor(output)).reshape(rows.shape[0], -1)
        if any(int(i.max()) >= out.shape[1] or int(i.min()) < 0 for i in picks):
            raise TargetError(f"a target or contrast class index is outside the output's {out.shape[1]} classes.")
        out = torch.log_softmax(out, -1) if score == "logprob" else torch.softmax(out, -1) if score == "prob" else out
        chosen = [out.gather(1, i.view(-1, 1)).squeeze(1) for i in picks]
        return chosen[0] - chosen[1] if len(chosen) == 2 else chosen[0]

    leaf = rows.requires_grad_(True)
    with torch.enable_grad(), model.trace(leaf):
        given = model.input
        scores = score_fn(model.output)
        with scores.sum().backward():
            grad = given.grad.save()
    values = _attribute(grad, rows.detach(), n, opts)
    text = "callable" if fn is not None else str(target.tolist() if isinstance(target, torch.Tensor) else target)
    return Attribution(tokens=[str(i) for i in range(values.shape[-1])],
                       scores=values if opts["mode"] == "grad_x_input" else values.abs(), values=values, delta=None,
                       target=text if contrast is None else f"{text} − {contrast}", method="saliency",
                       info=_info(opts))
