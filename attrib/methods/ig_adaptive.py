"""Integrated gradients with adaptive steps: the model side of :mod:`attrib.methods.adaptive`.

>>> import torch, attrib
>>> from attrib.methods.ig_adaptive import AUTO
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)))
>>> a = attrib.integrated_gradients(net, torch.ones(1, 3), target=0, n_steps=AUTO)
>>> a.info["evaluations"] <= 62, abs(float(a.delta)) <= 0.01 * abs(a.info["f_x"] - a.info["f_baseline"])
(True, True)

Every round of refinement is one :func:`~attrib.methods.batching.run_rows` call over the new nodes of every
unfinished prompt (halved on out-of-memory like the fixed rules); each row's gradient is weighted by its
Kronrod weight and summed into its interval, and the row's scalar (the gradient times x − b, summed: the
integrand of completeness) is summed with the Kronrod and the nested Gauss weights for the error estimate.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import ConvergenceWarning, MethodError
from ..models.sites import Site
from .adaptive import Rows, integrate_adaptive
from .batching import plan_key, run_rows
from .inputs import Inputs
from .passes import item_gradients

__all__ = ["AUTO", "check_auto", "integrate_auto"]

AUTO = "auto"
DEFAULT_TOL = 0.01
DEFAULT_BUDGET = 1000


def check_auto(tol: Any, max_evaluations: Any) -> tuple[float, int]:
    """``tol`` and ``max_evaluations`` of ``n_steps="auto"``, or a clear error."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < float(tol) < 1:
        raise MethodError(f"tol={tol!r} must be a number between 0 and 1 (the completeness error allowed, relative "
                          "to |f(x) − f(baseline)|); pass e.g. tol=0.01.")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 17:
        raise MethodError(f"max_evaluations={max_evaluations!r} must be an int of at least 17 (one 15-point interval "
                          "and the two end points); pass e.g. max_evaluations=1000.")
    return float(tol), max_evaluations


def integrate_auto(prep: Inputs, where: Site, x: torch.Tensor, b: torch.Tensor, n_out: int, batch_size: int | None,
                   tol: float, max_evaluations: int, point: Any, acc: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """(attributions (items, n_out, ...), f(x), f(b), each item's info) with adaptive Gauss–Kronrod steps."""
    model = prep.model
    item_shape = x.shape[1:]

    def weighted(rows: Rows, scores_out: torch.Tensor | None = None) -> torch.Tensor:
        """Σ over rows of [Kronrod-weighted gradient, and the three scalar sums] per group, via run_rows."""
        def run(idx: torch.Tensor) -> torch.Tensor:
            idx_cpu = idx.cpu()
            item = rows.items[idx_cpu].to(x.device)
            alpha = rows.alphas[idx_cpu].to(device=x.device, dtype=acc).view(-1, *[1] * (x.dim() - 1))
            value = point(x[item], b[item], alpha)
            scores, grad = item_gradients(prep, where, value, item, n_out)
            if scores_out is not None:
                scores_out[idx_cpu] = scores.double().cpu()
            grad = grad.to(acc)                                                   # (R, n_out, ...)
            scalar = (grad * (x[item] - b[item]).to(acc).unsqueeze(1)).flatten(2).sum(-1)   # (R, n_out)
            wk = rows.kronrod[idx_cpu].to(device=grad.device, dtype=grad.dtype).unsqueeze(1)
            wg = rows.gauss[idx_cpu].to(device=grad.device, dtype=grad.dtype).unsqueeze(1)
            sums = torch.stack([scalar * wk, scalar * wg, scalar.abs() * wk], dim=-1)          # (R, n_out, 3)
            return torch.cat([grad.flatten(2) * wk.unsqueeze(-1), sums], dim=-1)           # (R, n_out, numel + 3)

        out = run_rows(run, rows.items.numel(), lambda idx: rows.groups[idx.cpu()].to(x.device), rows.n_groups,
                       batch_size, like=x, remember=plan_key(model, ("ig-auto", where.name, n_out), x, prep.x.shape[1]))
        return out

    # the end points first: f(x) and f(b) set the tolerance of every item
    n = prep.n_items
    ends = Rows(items=torch.arange(n).repeat_interleave(2), alphas=torch.tensor([1.0, 0.0] * n, dtype=torch.float64),
                kronrod=torch.zeros(2 * n, dtype=torch.float64), gauss=torch.zeros(2 * n, dtype=torch.float64),
                groups=torch.arange(2 * n), n_groups=2 * n)
    end_scores = torch.zeros(2 * n, n_out, dtype=torch.float64)
    weighted(ends, end_scores)
    f_x, f_b = end_scores[0::2], end_scores[1::2]

    def evaluate(rows: Rows) -> tuple[torch.Tensor, ...]:
        out = weighted(rows)
        numel = item_shape.numel()
        vec = out[..., :numel].reshape(rows.n_groups, n_out, *item_shape)
        return vec, out[..., numel].double().cpu(), out[..., numel + 1].double().cpu(), out[..., numel + 2].double().cpu()

    res = integrate_adaptive(evaluate, n, diffs=f_x - f_b, tol=tol, max_evaluations=max_evaluations - 2)
    attr = (x.to(acc) - b.to(acc)).unsqueeze(1) * res.values.to(x.device)
    evaluations = res.evaluations + 2
    advice = ("raise max_evaluations, or choose a baseline whose path is smoother (attrib.path_profile shows it)"
              if x.dtype not in (torch.bfloat16, torch.float16) else
              f"the model computes in {str(x.dtype).removeprefix('torch.')}, whose rounding may keep the error above "
              "tol: pass a larger tol, or run the model in float32")
    for i in torch.nonzero(~res.converged).flatten().tolist():
        diff = float((f_x[i] - f_b[i]).abs().max())
        delta = float((attr[i].flatten(1).sum(-1).double().cpu() - (f_x[i] - f_b[i])).abs().max())
        warnings.warn(ConvergenceWarning(
            f"integrated gradients (n_steps='auto') used its max_evaluations={max_evaluations} on item {i} before "
            f"reaching tol={tol}: the completeness error is {delta:.3g} of |f(x) − f(b)| = {diff:.3g} "
            f"({delta / max(diff, 1e-300):.2g} of it); {advice}."), stacklevel=4)
    per_item = [{"evaluations": int(evaluations[i]), "converged": bool(res.converged[i]),
                 "intervals": res.intervals[i], "tol": tol} for i in range(n)]
    return attr, f_x.to(x.device), f_b.to(x.device), per_item
