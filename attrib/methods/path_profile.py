"""The integrand of integrated gradients along its path: f(α) and df/dα at chosen points α of [0, 1].

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(3, 1))
>>> x = torch.tensor([[1.0, 2.0, 3.0]])
>>> p = attrib.path_profile(net, x, target=0, n_points=5)
>>> p.alphas.tolist()
[0.0, 0.25, 0.5, 0.75, 1.0]
>>> torch.allclose(p.rate, (net.module.weight[0] @ x[0]).double().detach().expand(5))    # linear: df/dα = w·(x − b)
True

Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks") integrates
df/dα along the straight path b + α (x − b) from the baseline b (α = 0) to the input x (α = 1); its
completeness, Σ attributions = f(x) − f(b), holds only as far as the quadrature resolves that integrand. On
some models the path has a spike (the score nearly jumps within a hundredth of α) or a chaotic region (a zero
baseline's near-zero residual stream under RMSNorm), and no fixed rule integrates it. :func:`path_profile`
shows it: every (item, α) is one row of batched forward/backward passes (the same rows, passes and
out-of-memory halving as integrated gradients), giving the target score f(α) and the completeness integrand
df/dα = Σ ∂f/∂v · (x − b) at that point.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..core.envoy import Envoy
from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError
from ..models.language import LanguageModel
from ..models.sites import Site, site
from ..results import PathProfile
from .baselines import baseline_for
from .batching import plan_key, run_rows
from .inputs import check_batch_size, check_finite_inputs, check_grad_mode, prepare
from .integrated_gradients import _accumulation_dtype, _baseline_info, _integer_baseline, _layer_value, _point
from .passes import item_gradients
from .quadrature import MAX_STEPS

__all__ = ["path_profile", "DEFAULT_POINTS"]

DEFAULT_POINTS = 101


@releasing
def path_profile(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
                 metric: Callable | None = None, baseline: Any = "auto", layer: str | Site | Envoy | None = None,
                 n_points: int = DEFAULT_POINTS, alphas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
                 batch_size: int | None = None) -> PathProfile | list[PathProfile]:
    """The target score f(α) and the integrand df/dα of integrated gradients at points α of its straight path
    b + α (x − b) (Sundararajan et al. 2017). One :class:`~attrib.PathProfile` per input item, like
    :func:`~attrib.integrated_gradients`.

    >>> import attrib
    >>> model = attrib.load_demo_model(device="cpu")
    >>> p = attrib.path_profile(model, "The capital of France is", target=" Paris", n_points=3)
    >>> p.alphas.tolist(), p.f.shape, p.rate.shape, p.info["baseline"]
    ([0.0, 0.5, 1.0], torch.Size([3]), torch.Size([3]), 'auto')

    - ``inputs``, ``target``, ``contrast``, ``score``, ``metric``: as in every method
      (:mod:`attrib.methods.inputs`); a multi-token target's score is summed, as in integrated gradients.
    - ``baseline``: :mod:`attrib.methods.baselines` (default ``"auto"``); ``layer``: the site whose value moves
      along the path, as in integrated gradients' ``layer=`` (the baseline is still an input).
    - ``n_points``: that many evenly spaced α from 0 to 1 (an int from 2 to 10,000); or ``alphas``: your own
      points in [0, 1], in any order (the profile holds them in ascending order).
    - ``batch_size``: rows (items × points) per pass; ``None`` runs all at once and halves on out-of-memory.

    A NaN at a point (a zero baseline's gradient at α = 0, say) is kept in ``.f`` / ``.rate``: it tells where
    the path is undefined. See ``.steepest()``, ``.trapezoid()`` and ``.plot()``.
    """
    check_grad_mode("path_profile", model)
    grid = _check_alphas(n_points, alphas)
    batch_size = check_batch_size(batch_size)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    where = prep.site if layer is None else site(model, layer)
    if where.name == prep.site.name and not prep.x.is_floating_point():
        raise MethodError(f"the inputs are {prep.x.dtype}, which has no gradient; pass layer=... (a site name or the "
                          "embedding module's path) to profile the path of a module's output.")
    at_layer = where.name != prep.site.name
    if prep.x.is_floating_point():
        b_in = baseline_for(prep, baseline, where.name if at_layer else None)
    else:                       # a plain model's integer inputs: "auto" means zeros, as for any plain model
        auto = isinstance(baseline, str) and baseline == "auto"
        b_in = _integer_baseline(prep, "zeros" if auto else baseline, where.name)
    if at_layer:
        x, b = _layer_value(prep, where, None, batch_size), _layer_value(prep, where, b_in, batch_size)
    else:
        x, b = prep.x, b_in
    ends = [a for a in (1.0, 0.0) if a not in grid]           # f(x) and f(b) from the same passes
    nodes = np.concatenate([grid, np.array(ends, dtype=np.float64)])
    values = _profile(prep, where, x, b, nodes, batch_size)  # (items, nodes, 2): f, df/dα
    i_x, i_b = int(np.flatnonzero(nodes == 1.0)[0]), int(np.flatnonzero(nodes == 0.0)[0])
    k = len(grid)
    layer_name = where.name if at_layer else "embeddings" if isinstance(model, LanguageModel) else "input"
    info = {"baseline": _baseline_info(baseline), "layer": layer_name, "score": "metric" if metric is not None else score,
            "n_points": k}
    alpha_t = torch.from_numpy(grid.copy())
    results = [PathProfile(tokens=list(prep.labels[i]), target=prep.describe(i), alphas=alpha_t.clone(),
                           f=values[i, :k, 0].clone(), rate=values[i, :k, 1].clone(), f_x=float(values[i, i_x, 0]),
                           f_baseline=float(values[i, i_b, 0]), info=dict(info))
               for i in range(prep.n_items)]
    return results[0] if prep.single else results


def _check_alphas(n_points: Any, alphas: Any) -> np.ndarray:
    """The points α as a sorted float64 array: ``n_points`` evenly spaced ones, or the user's ``alphas``."""
    if alphas is None:
        if isinstance(n_points, (bool, np.bool_)) or not isinstance(n_points, (int, np.integer)) \
                or not 2 <= n_points <= MAX_STEPS:
            raise MethodError(f"n_points={n_points!r:.40} must be an int from 2 to {MAX_STEPS} (evenly spaced α from "
                              f"0 to 1, both ends included); pass e.g. n_points={DEFAULT_POINTS}, or alphas=[...].")
        return np.linspace(0.0, 1.0, int(n_points))
    if not (isinstance(n_points, int) and n_points == DEFAULT_POINTS):
        raise MethodError(f"n_points={n_points!r:.40} and alphas= were both given, but alphas sets the points "
                          "itself; pass one of them.")
    shown = f"alphas={alphas!r:.60}"
    try:
        if isinstance(alphas, (str, bytes)):
            raise TypeError
        grid = (alphas.detach().cpu().double().numpy() if isinstance(alphas, torch.Tensor)
                else np.asarray(alphas, dtype=np.float64))
    except (TypeError, ValueError):
        raise MethodError(f"{shown} is not a sequence of numbers; pass a 1-D sequence of floats in [0, 1], e.g. "
                          "alphas=[0.0, 0.5, 1.0].") from None
    if grid.ndim != 1 or grid.size == 0:
        what = "is empty" if grid.size == 0 else f"has shape {grid.shape}, not one dimension"
        raise MethodError(f"{shown} {what}; pass a 1-D sequence of floats in [0, 1], e.g. alphas=[0.0, 0.5, 1.0].")
    if grid.size > MAX_STEPS:
        raise MethodError(f"alphas has {grid.size} points, more than the {MAX_STEPS} attrib runs (each is a forward "
                          f"and a backward per prompt); pass at most {MAX_STEPS}.")
    bad = grid[~np.isfinite(grid)]
    if bad.size:
        raise MethodError(f"{shown} holds {bad[0]}, not a finite number; pass floats in [0, 1], e.g. "
                          "alphas=[0.0, 0.5, 1.0].")
    out = grid[(grid < 0) | (grid > 1)]
    if out.size:
        raise MethodError(f"{shown} holds {out[0]:g}, outside [0, 1] (α = 0 is the baseline, α = 1 the input); pass "
                          "floats in [0, 1].")
    return np.sort(grid, kind="stable")


def _profile(prep: Any, where: Site, x: torch.Tensor, b: torch.Tensor, nodes: np.ndarray,
             batch_size: int | None) -> torch.Tensor:
    """(items, nodes, 2) float64 on the CPU: f(α) and df/dα = Σ ∂f/∂v · (x − b) for every item and node."""
    n_nodes = len(nodes)
    acc = _accumulation_dtype(x)
    alpha_all = torch.tensor(nodes, dtype=acc, device=x.device)

    def run(rows: torch.Tensor) -> torch.Tensor:
        item, step = rows // n_nodes, rows % n_nodes
        alpha = alpha_all[step].view(-1, *[1] * (x.dim() - 1))
        scores, grad = item_gradients(prep, where, _point(x[item], b[item], alpha), item, 1)
        rate = (grad[:, 0].to(acc) * (x[item].to(acc) - b[item].to(acc))).flatten(1).sum(-1)
        return torch.stack([scores[:, 0].double(), rate.double()], dim=-1)        # (rows, 2)

    total = prep.n_items * n_nodes
    out = run_rows(run, total, lambda rows: rows, total, batch_size, like=x,
                   remember=plan_key(prep.model, ("path profile", where.name), x, prep.x.shape[1]))
    return out.detach().cpu().view(prep.n_items, n_nodes, 2)
