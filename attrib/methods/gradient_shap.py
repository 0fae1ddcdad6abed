"""GradientSHAP: expected gradients × (input − baseline) over baselines drawn from a distribution, noisy inputs
and random points on the straight path between them.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(3, 1, bias=False))
>>> with torch.no_grad():
...     _ = net.module.weight.copy_(torch.tensor([[1.0, 2.0, -1.0]]))
>>> r = attrib.gradient_shap(net, torch.tensor([[1.0, 1.0, 1.0]]), target=0, baselines=torch.zeros(4, 3),
...                          n_samples=8, seed=0)
>>> r.values.tolist()                                    # a linear model: weight × (input − baseline) exactly
[1.0, 2.0, -1.0]

Lundberg & Lee 2017 ("A Unified Approach to Interpreting Model Predictions"); Erion et al. 2021 (expected
gradients). As Captum's ``GradientShap``: for each input, ``n_samples`` rows, each with a baseline drawn
uniformly from ``baselines`` (a tensor whose first dimension indexes the distribution), the input plus
N(0, ``stdevs``²) noise, and α ~ U(0, 1); the attribution is the mean over the rows of the gradient at
``baseline + α (noisy input − baseline)`` times ``(noisy input − baseline)``. The draws are Captum's, in its
order: the baseline indices (``numpy``'s ``choice``), then the noise (``torch.normal``, σ in the input's dtype),
then α (``numpy``'s ``uniform``); from numpy's and torch's global generators, or from generators seeded with
``seed`` (Captum under ``np.random.seed(s); torch.manual_seed(s)`` draws the same numbers). For a language model
``baselines`` may also be one baseline of :func:`attrib.integrated_gradients` (default ``"zeros"``): there is
then nothing to draw from, each row using the item's own. ``.delta`` is Σ attribution − (f(x) − E f(baseline)),
which is 0 only in expectation.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError
from ..results import Attribution
from .baselines import baseline_for
from .batching import plan_key, run_rows
from .collect import attributions
from .checks import check_batch_size, check_finite_inputs, check_finite_values, check_grad_mode
from .inputs import prepare
from .passes import gradient_at

__all__ = ["gradient_shap"]


@releasing
def gradient_shap(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
                  metric: Callable[[Any], torch.Tensor] | None = None, baselines: Any = "zeros", n_samples: int = 5,
                  stdevs: float = 0.0, seed: int | None = None,
                  batch_size: int | None = None) -> Attribution | list[Attribution]:
    """GradientSHAP (expected gradients); see the module docstring. ``batch_size`` counts rows."""
    check_grad_mode("gradient_shap", model)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise MethodError(f"n_samples={n_samples!r:.30} must be a whole number ≥ 1 of samples per input.")
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or not np.isfinite(stdevs) or stdevs < 0:
        raise MethodError(f"stdevs={stdevs!r:.30} must be a finite number ≥ 0 (the noise's standard deviation).")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise MethodError(f"seed={seed!r:.30} must be an int or None (None: the global generators).")
    batch_size = check_batch_size(batch_size)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    x, n, rows = prep.x, n_samples, prep.n_items * n_samples
    if not x.is_floating_point():
        raise MethodError(f"the input is {x.dtype}, which has no gradient; attribute to an embedding instead.")
    numpy_rng = np.random if seed is None else np.random.RandomState(seed)
    torch_rng = None if seed is None else torch.Generator(device=x.device).manual_seed(seed)
    distribution = isinstance(baselines, torch.Tensor) and baselines.dim() == x.dim() and \
        tuple(baselines.shape[1:]) == tuple(x.shape[1:])
    if distribution:
        dist = baselines.to(x.device, x.dtype)
        if not torch.isfinite(dist).all():
            raise MethodError("baselines contain NaN or infinite values; pass finite baselines.")
        chosen = dist[torch.as_tensor(numpy_rng.choice(len(dist), rows), device=x.device)]
        mean_baseline = None
    else:
        if isinstance(baselines, torch.Tensor) and baselines.dim() == x.dim() and baselines.shape[0] != prep.n_items:
            raise MethodError(f"baselines of shape {tuple(baselines.shape)} are neither a distribution "
                              f"(K, {', '.join(map(str, x.shape[1:]))}) nor one baseline per input.")
        b = baseline_for(prep, baselines)
        chosen = b.repeat_interleave(n, 0)
        mean_baseline = b
    std = torch.full((rows, *x.shape[1:]), float(stdevs), dtype=x.dtype, device=x.device)
    noisy = x.repeat_interleave(n, 0) + torch.normal(0.0, std, generator=torch_rng)
    alpha = torch.as_tensor(numpy_rng.uniform(0.0, 1.0, rows), dtype=x.dtype, device=x.device)
    alpha = alpha.view(-1, *(1,) * (x.dim() - 1))
    points = chosen + alpha * (noisy - chosen)

    def run(chunk: torch.Tensor) -> torch.Tensor:
        items = chunk // n
        args, kwargs = prep.call(items)
        _, grad = gradient_at(model, prep.site, points[chunk], lambda o: prep.scores(o, items).sum(-1), args, kwargs)
        value = grad * (noisy[chunk] - chosen[chunk])
        return value.to(torch.promote_types(value.dtype, torch.float32)).unsqueeze(1)

    sums = run_rows(run, rows, lambda chunk: chunk // n, prep.n_items, batch_size, like=x,
                    remember=plan_key(model, ("gradient_shap",), x))
    values = sums[:, 0] / n
    check_finite_values("gradient_shap", values, prep)
    totals = _expected(model, prep, dist if distribution else mean_baseline, distribution)
    return attributions(prep, values, "gradient_shap", totals=totals,
                        info=dict(n_samples=n, stdevs=float(stdevs), seed=seed))


def _expected(model: Model, prep: Any, baselines: torch.Tensor, distribution: bool) -> torch.Tensor:
    """f(x) − mean f(baseline) per item (the baselines' mean score over the distribution): what the
    attributions sum to in expectation."""
    def score(rows_x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        args, kwargs = prep.call(items)
        with torch.no_grad(), model.trace(*args, **kwargs):
            prep.site.write(model, rows_x)
            s = prep.scores(model.output, items).sum(-1).save()
        return s
    items = torch.arange(prep.n_items, device=prep.x.device)
    f_x = score(prep.x, items)
    if distribution:
        k = len(baselines)
        grid = items.repeat_interleave(k)
        f_b = score(baselines.repeat(prep.n_items, *(1,) * (baselines.dim() - 1)), grid).view(prep.n_items, k).mean(1)
    else:
        f_b = score(baselines, items)
    return (f_x - f_b).detach()
