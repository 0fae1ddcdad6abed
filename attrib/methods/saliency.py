"""Saliency: the gradient of a target score with respect to the input (embeddings), and its relatives.

>>> import torch, attrib
>>> from attrib.methods.saliency import saliency
>>> net = attrib.Model(torch.nn.Linear(3, 2, bias=False))
>>> with torch.no_grad():
...     _ = net.module.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.0, 1.0, 0.0]]))
>>> x = torch.tensor([[2.0, 1.0, 1.0]])
>>> saliency(net, x, target=0).values.tolist()              # d out[0] / dx: the weight's first row
[1.0, -2.0, 3.0]
>>> saliency(net, x, target=0, mode="grad_x_input").scores.tolist()
[2.0, -2.0, 3.0]

- Inputs, targets and results as in every method (:mod:`attrib.methods.inputs`): one result per item.
- Language models: the gradient is taken at the output of the input embedding module. ``mode="grad"``:
  ``.values`` is the signed gradient (tokens × hidden) and ``.scores`` its L2 norm per token (Simonyan et al.
  2014, "Deep Inside Convolutional Networks"). ``mode="grad_x_input"``: gradient × embedding, summed per
  token (Shrikumar et al. 2016, "Not Just a Black Box").
- Plain models: the gradient with respect to the float input tensor itself. ``.values`` has the input's
  shape (one row); ``.scores`` is ``|values|`` (``grad``) or ``values`` (``grad_x_input``), element by element.
- ``smooth=N``: SmoothGrad (Smilkov et al. 2017) over N noisy copies of each input, σ = ``noise`` (default 0.15)
  × (max − min) of that input, all copies in one batched pass; ``smooth_type="smoothgrad"`` averages the per-sample
  attributions, ``"smoothgrad_sq"`` their squares, ``"vargrad"`` takes their variance (Adebayo et al. 2018,
  "Sanity Checks for Saliency Maps"), as Captum's ``NoiseTunnel``. Scores are reduced from the smoothed values.
  Noise is ``torch.normal(0, σ)`` of shape (inputs × samples, ...) in the input's dtype, from the global RNG or
  from a generator seeded with ``seed``: the draws of Captum's ``NoiseTunnel`` under the same seed (Captum
  makes σ in the default dtype, so set it to the input's dtype to compare). ``noise``, ``smooth_type`` or ``seed``
  without ``smooth=N > 0`` raise :class:`~attrib.MethodError` rather than being ignored.
- ``compile=True`` (language models, no ``metric``): the passes call the Hugging Face model directly under
  ``torch.compile``, in bucketed shapes (:mod:`attrib.methods.compiled`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError
from ..models.language import LanguageModel
from ..results import Attribution
from .batching import plan_key, run_rows
from .checks import check_finite_values
from .compiled import CompileOptions, check_supported, gradient_passes, options_of
from .inputs import check_batch_size, check_finite_inputs, check_grad_mode, prepare

__all__ = ["saliency", "MODES", "SMOOTH_TYPES"]

MODES = ("grad", "grad_x_input")
SMOOTH_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")
DEFAULT_NOISE = 0.15


@releasing
def saliency(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
             metric: Callable[[Any], torch.Tensor] | None = None, mode: str = "grad", smooth: int = 0,
             noise: float | None = None, smooth_type: str | None = None, seed: int | None = None,
             batch_size: int | None = None, compile: bool | CompileOptions = False) -> Attribution | list[Attribution]:
    """Gradient (``mode="grad"``) or gradient × input (``"grad_x_input"``) of the target score; see the module
    docstring. SmoothGrad's options (``noise``, default 0.15; ``smooth_type``, default ``"smoothgrad"``; ``seed``)
    need ``smooth=N > 0``: given without it they are refused, never ignored. ``batch_size``: rows (items × noisy
    samples) per pass (``None``: all, halved on out-of-memory). ``compile=True``: compiled passes
    (:mod:`attrib.methods.compiled`)."""
    check_grad_mode("saliency", model)
    _check(mode, smooth, noise, smooth_type, seed)
    compiled = options_of(compile)
    if compiled is not None:
        check_supported("saliency", model, metric=metric)
    noise = DEFAULT_NOISE if noise is None else noise
    smooth_type = "smoothgrad" if smooth_type is None else smooth_type
    batch_size = check_batch_size(batch_size)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    x = prep.x
    if not x.is_floating_point():
        raise MethodError(f"the input is {x.dtype}, which has no gradient; attribute to an embedding instead (for a "
                          "language model: attrib.LanguageModel(hf_model, tokenizer)), or use integrated_gradients "
                          "with layer=....")
    language = isinstance(model, LanguageModel)
    n = smooth or 1
    valid = None
    if language:            # σ over each prompt's own positions and its continuation, not the padding
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for i, keep in enumerate(prep.keep):
            valid[i, :prep.n_prompt] = False
            valid[i, keep.to(x.device)] = True
        valid = valid.unsqueeze(-1)
    rows = _noisy(x, n, noise, valid, seed) if smooth else x.clone()

    def run(chunk: torch.Tensor) -> torch.Tensor:
        item = chunk // n
        grad = gradients(prep, prep.site, rows[chunk], item, 1)[1][:, 0]
        attr = grad * rows[chunk] if mode == "grad_x_input" else grad
        attr = attr.to(torch.promote_types(attr.dtype, torch.float32))   # sums (and squares) in >= float32
        return torch.stack([attr, attr * attr], 1) if smooth else attr.unsqueeze(1)

    remember = plan_key(model, ("saliency",), x)
    with gradient_passes(prep, compiled, remember, batch_size, prep.n_items * n) as gradients:
        sums = run_rows(run, prep.n_items * n, lambda chunk: chunk // n, prep.n_items, batch_size, like=x,
                        remember=remember)
    values = _smoothed(sums, n, smooth_type) if smooth else sums[:, 0]
    check_finite_values("saliency", values, prep)
    options = dict(noise=noise, smooth_type=smooth_type, seed=seed) if smooth else {}
    info = {k: v for k, v in dict(mode=mode, smooth=smooth, **options).items() if v is not None}
    if compiled is not None:
        info["compile"] = True
    results = []
    for i in range(prep.n_items):
        if language:
            v = values[i, prep.keep[i].to(values.device)]
            scores = v.sum(-1) if mode == "grad_x_input" else v.norm(dim=-1)
        else:
            v = values[i]
            scores = v if mode == "grad_x_input" else v.abs()
        results.append(Attribution(tokens=list(prep.labels[i]), scores=scores, values=v, delta=None,
                                   target=prep.describe(i), method="saliency", info=info))
    return results[0] if prep.single else results


def _smoothed(sums: torch.Tensor, n: int, smooth_type: str) -> torch.Tensor:
    """From per-item sums of the samples' attributions and of their squares (items, 2, ...)."""
    mean, mean_sq = sums[:, 0] / n, sums[:, 1] / n
    if smooth_type == "smoothgrad":
        return mean
    return mean_sq if smooth_type == "smoothgrad_sq" else mean_sq - mean * mean


def _check(mode: str, smooth: int, noise: float | None, smooth_type: str | None, seed: int | None) -> None:
    if not isinstance(mode, str) or mode not in MODES:
        raise MethodError(f"mode={mode!r:.40} is not one of {', '.join(MODES)}.")
    if smooth_type is not None and (not isinstance(smooth_type, str) or smooth_type not in SMOOTH_TYPES):
        raise MethodError(f"smooth_type={smooth_type!r:.40} is not one of {', '.join(SMOOTH_TYPES)}.")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 0:
        raise MethodError(f"smooth={smooth!r:.40} must be a whole number of noisy samples, 0 (no smoothing) or more.")
    if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float)) or
                              not math.isfinite(noise) or noise < 0):
        raise MethodError(f"noise={noise!r:.40} must be a finite number ≥ 0 (σ as a fraction of the input's range).")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise MethodError(f"seed={seed!r:.40} must be an int or None (None: the global torch RNG).")
    given = [f"{k}={v!r:.40}" for k, v in (("smooth_type", smooth_type), ("noise", noise), ("seed", seed))
             if v is not None]
    if given and not smooth:
        verb = "is a SmoothGrad option" if len(given) == 1 else "are SmoothGrad options"
        listed = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
        raise MethodError(f"{listed} {verb}, but smooth=0 runs plain saliency without noise; pass "
                          "smooth=N > 0 noisy samples to use them, or leave them out.")


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
