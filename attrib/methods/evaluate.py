"""Which attribution method is most faithful on your model: perturbation curves over your prompts.

>>> import torch, transformers, attrib
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, bos_token_id=0, eos_token_id=0)
>>> hf = transformers.GPT2LMHeadModel(config)
>>> e = attrib.faithfulness(attrib.LanguageModel(hf.eval()), [[3, 5, 7, 2], [4, 4, 9]],
...                         methods=["grad_x_input", "lrp"], n_random=2, replace=0)
>>> e.methods
['grad_x_input', 'lrp', 'random']

For each prompt, each method's token scores rank its tokens, most relevant (most positive) first, and:

- **deletion** replaces the top k tokens' embeddings by the replacement (``replace``: a baseline of
  :func:`attrib.integrated_gradients`, default ``"pad"``; a token id such as a mask token's) for k = 0 … n;
  **insertion** starts from the fully replaced prompt and restores them (Samek et al. 2017, "Evaluating the
  Visualization of What a Deep Neural Network Has Learned"; Petsiuk et al. 2018).
- AOPC (Samek et al. 2017): the mean over k = 1 … n of f(x) − f(x with k deleted) (higher: more faithful), and
  for insertion the mean of f(k inserted) − f(none) (higher: more faithful).
- comprehensiveness and sufficiency (DeYoung et al. 2020, "ERASER"): the mean over the shares ``bins`` (1, 5,
  10, 20, 50 %, each rounded up to whole tokens) of f(x) − f(x without its top tokens) (higher: more faithful)
  and f(x) − f(only its top tokens) (lower: more faithful).
- the same for ``n_random`` random orders (seeded), as the reference any method should beat.

f is the target's ``score`` ("logit" by default; "prob" as in ERASER); the target is each prompt's top
prediction unless given, and the same for every method. ``methods``: names of :data:`BUILTIN` or a dict of name →
``fn(model, prompts, target=..., score=...) -> list of Attribution`` (called on ``chunk`` prompts at a time, with
``target`` as given: None or the chunk's part of the list). Curves are averaged over prompts on an 11-point grid of shares.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.model import Model
from ..errors import MethodError
from ..results.evaluation import Evaluation
from .baselines import baseline_for
from .inputs import prepare

__all__ = ["faithfulness", "BUILTIN"]


def _builtin() -> dict[str, Callable[..., Any]]:
    """name -> fn(model, prompts, target=, score=, batch_size=): each built-in method with its settings here."""
    from functools import partial

    from .deeplift import deeplift
    from .gim import gim
    from .gradient_shap import gradient_shap
    from .integrated_gradients import integrated_gradients
    from .lrp import lrp
    from .saliency import saliency

    return {
        "integrated_gradients": integrated_gradients,
        "saliency": saliency,
        "grad_x_input": partial(saliency, mode="grad_x_input"),
        "smoothgrad": partial(saliency, mode="grad_x_input", smooth=8, seed=0),
        "attnlrp": partial(lrp, rules="attnlrp"),
        "cp-lrp": partial(lrp, rules="cp-lrp"),
        "gim": gim,
        "deeplift": partial(deeplift, baseline="pad"),
        "gradient_shap": partial(gradient_shap, baselines="pad", n_samples=8, seed=0),
    }


BUILTIN = ("integrated_gradients", "saliency", "grad_x_input", "smoothgrad", "attnlrp", "cp-lrp", "gim", "deeplift",
           "gradient_shap")
ALIASES = {"lrp": "attnlrp"}
GRID = 11


def faithfulness(model: Model, prompts: Sequence[Any], methods: Sequence[str] | Mapping[str, Callable] = BUILTIN, *,
                 target: Any = None, score: str = "logit", replace: Any = "pad", n_random: int = 3, seed: int = 0,
                 bins: Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.5), chunk: int = 16,
                 batch_size: int = 64) -> Evaluation:
    """Deletion / insertion curves, AOPC, comprehensiveness and sufficiency of ``methods`` on ``prompts``; see the
    module docstring. ``target``: None (each prompt's top prediction), or one per prompt. Methods run on ``chunk``
    prompts at a time; the built-in ones and the curves' forwards take ``batch_size`` rows per pass."""
    table = _methods(methods)
    builtin = not isinstance(methods, Mapping)
    if isinstance(prompts, (str, torch.Tensor)) or not len(prompts):
        raise MethodError("faithfulness takes a non-empty list of prompts (texts or token id lists).")
    if not isinstance(n_random, int) or isinstance(n_random, bool) or n_random < 0:
        raise MethodError(f"n_random={n_random!r:.30} must be a whole number ≥ 0 of random orders.")
    if isinstance(target, (list, tuple)) and len(target) != len(prompts):
        raise MethodError(f"target has {len(target)} entries for {len(prompts)} prompts; give one per prompt.")
    names = [*table, *(["random"] if n_random else [])]
    sums = {k: torch.zeros(len(names), dtype=torch.float64) for k in ("aopc_d", "aopc_i", "comp", "suff")}
    curves = {k: torch.zeros(len(names), GRID, dtype=torch.float64) for k in ("d", "i")}
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, len(prompts), chunk):
        part = list(prompts[start:start + chunk])
        part_target = list(target[start:start + chunk]) if isinstance(target, (list, tuple)) else target
        prep = prepare(model, part, target=part_target, score=score)
        ranked: list[list[torch.Tensor]] = [[] for _ in part]
        for name, fn in table.items():
            extra = dict(batch_size=batch_size) if builtin else {}
            results = fn(model, part, target=part_target, score=score, **extra)
            results = results if isinstance(results, list) else [results]
            for i, result in enumerate(results):
                scores = result.scores.detach().reshape(-1).to(torch.float64).cpu()
                if scores.numel() != len(prep.keep[i]):
                    raise MethodError(f"method {name!r} gave {scores.numel()} token scores for a prompt of "
                                      f"{len(prep.keep[i])} tokens.")
                ranked[i].append(torch.argsort(scores, descending=True, stable=True))
        replaced = baseline_for(prep, replace)
        for i in range(len(part)):
            n = len(prep.keep[i])
            orders = [[o] for o in ranked[i]]
            if n_random:
                orders.append([torch.randperm(n, generator=generator) for _ in range(n_random)])
            f = _curves(model, prep, i, replaced, orders, batch_size)
            for row, (dele, ins) in enumerate(f):
                full, empty = dele[0], ins[0]
                sums["aopc_d"][row] += (full - dele[1:]).mean()
                sums["aopc_i"][row] += (ins[1:] - empty).mean()
                at = [min(n, max(1, math.ceil(q * n))) for q in bins]
                sums["comp"][row] += torch.stack([full - dele[k] for k in at]).mean()
                sums["suff"][row] += torch.stack([full - ins[k] for k in at]).mean()
                curves["d"][row] += _on_grid(dele - full)
                curves["i"][row] += _on_grid(ins - empty)
    count = len(prompts)
    return Evaluation(names, torch.linspace(0, 1, GRID, dtype=torch.float64), curves["d"] / count, curves["i"] / count,
                      sums["aopc_d"] / count, sums["aopc_i"] / count, sums["comp"] / count, sums["suff"] / count,
                      count, score, info=dict(replace=replace if isinstance(replace, (str, int, float)) else "tensor",
                                             n_random=n_random, seed=seed, bins=list(bins)))


def _methods(methods: Sequence[str] | Mapping[str, Callable]) -> dict[str, Callable]:
    if isinstance(methods, Mapping):
        bad = [k for k, v in methods.items() if not callable(v)]
        if bad or not methods:
            raise MethodError("methods= as a dict maps names to functions fn(model, prompts, target=..., score=...) -> "
                              "list of Attribution.")
        return dict(methods)
    if isinstance(methods, str):
        methods = [methods]
    builtin = _builtin()
    unknown = [m for m in methods if ALIASES.get(m, m) not in builtin]
    if unknown or not methods:
        raise MethodError(f"methods {', '.join(map(repr, unknown)) or '(none)'} are not among {', '.join(BUILTIN)}; or "
                          "pass a dict of name -> fn(model, prompts, target=..., score=...).")
    return {m: builtin[ALIASES.get(m, m)] for m in methods}


def _on_grid(values: torch.Tensor) -> torch.Tensor:
    """A curve given at k/n, k = 0 … n, linearly interpolated at the grid's shares."""
    n = len(values) - 1
    out = torch.empty(GRID, dtype=torch.float64)
    for j, q in enumerate(torch.linspace(0, 1, GRID, dtype=torch.float64).tolist()):
        pos = q * n
        lo = min(int(math.floor(pos)), n)
        hi = min(lo + 1, n)
        w = pos - lo
        out[j] = values[lo] * (1 - w) + values[hi] * w
    return out


def _curves(model: Model, prep: Any, item: int, replaced: torch.Tensor, orders: list[list[torch.Tensor]],
            batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each group of orders (a method's one, or the random ones: averaged), the deletion and insertion
    scores of ``item`` at k = 0 … n, from no-grad forwards of ``batch_size`` rows."""
    x, b = prep.x[item], replaced[item]
    keep = prep.keep[item].to(x.device)
    n = len(keep)
    rows = []
    for group in orders:
        for order in group:
            ranked = keep[order.to(keep.device)]
            for k in range(n + 1):
                deleted = x.clone()
                deleted[ranked[:k]] = b[ranked[:k]]
                inserted = b.clone()
                inserted[ranked[:k]] = x[ranked[:k]]
                rows += [deleted, inserted]
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = torch.stack(rows[start:start + batch_size])
        items = torch.full((len(chunk),), item, dtype=torch.long, device=x.device)
        args, kwargs = prep.call(items)
        with torch.no_grad(), model.trace(*args, **kwargs):
            prep.site.write(model, chunk)
            s = prep.scores(model.output, items).sum(-1).save()
        scores.append(s.detach().to(torch.float64).cpu())
    flat = torch.cat(scores).view(-1, n + 1, 2)
    out, at = [], 0
    for group in orders:
        block = flat[at:at + len(group)].mean(0)
        at += len(group)
        out.append((block[:, 0], block[:, 1]))
    return out
