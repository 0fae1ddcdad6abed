"""The passes methods ask the core for: one traced forward with a site's value replaced, and the gradient of
scores with respect to that value (one backward, or one vmapped backward for several scores).

Devices: a model dispatched over several devices (:mod:`attrib.core.devices`) computes each site on its own
device. The value a pass is given may live on another (the caller's: the model's input device); it is moved
into the site for the forward, and the scores and gradients come back on the value's device. ``values_at``
returns values where they live; a caller that combines sites moves them (:func:`values_at`'s ``device``).

>>> import torch, attrib
>>> from attrib.methods.passes import gradient_at
>>> from attrib.models.sites import site
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)))
>>> x = torch.tensor([[1.0, 2.0]])
>>> scores, grads = gradient_at(net, site(net, "0"), torch.ones(1, 3), lambda out: out, (x,), {})
>>> torch.allclose(grads, net.module[1].weight.detach())
True
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.model import Model
from ..core.release import free_after_oom, is_oom
from ..models.sites import Site

__all__ = ["gradient_at", "jacobian_at", "values_at", "item_gradients"]


def gradient_at(model: Model, where: Site, value: torch.Tensor, score_fn: Callable[[Any], torch.Tensor],
                args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One traced pass with ``where``'s value replaced by ``value``: (scores, d Σscores / d value).

    ``score_fn(model_output)`` scores each row (any shape with rows first). Rows are independent, so the
    gradient of their sum is each row's own gradient. No parameter gradient is computed. For a site that is
    part of its module's value (heads, a fused projection's q), the gradient is taken at the module's value
    and the site's part of it is returned. Scores and gradient are on ``value``'s device.
    """
    leaf = value.detach().requires_grad_(True)
    with torch.enable_grad(), model.trace(*args, **kwargs):
        where.write(model, leaf)
        full = where.module_value(model)
        scores = score_fn(model.output)
        with scores.sum().backward():
            grad = where.take(full.grad).save()
    return scores.detach().to(value.device), grad.to(value.device)


def jacobian_at(model: Model, where: Site, value: torch.Tensor, score_fn: Callable[[Any], torch.Tensor],
                args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One traced forward with ``where``'s value replaced and ``score_fn -> (R, n)`` scores; then every
    column's gradient in one batched vector-Jacobian product: (scores (R, n), grads (R, n, ...)).

    The forward runs once for all ``n`` scores; the backward is vmapped over the ``n`` unit vectors
    (``is_grads_batched``), and only ``value``'s gradient is computed, never the parameters'. Scores and
    gradients are on ``value``'s device.
    """
    leaf = value.detach().requires_grad_(True)
    with torch.enable_grad(), model.trace(*args, **kwargs):
        where.write(model, leaf)
        scores = score_fn(model.output)
        n = scores.shape[1]
        units = torch.eye(n, dtype=scores.dtype, device=scores.device).unsqueeze(1).expand(n, *scores.shape)
        try:
            (grads,) = torch.autograd.grad(scores, leaf, units, is_grads_batched=True, retain_graph=True)
            return scores.detach().to(value.device), grads.movedim(0, 1)
        except RuntimeError as err:
            if is_oom(err) and value.shape[0] > 1:
                raise                               # the caller halves the batch and retries
            # an op without a batching rule (a custom autograd Function, an extension kernel), or no memory
            # for n gradients at once even at one row: one backward per column, still one forward
            free_after_oom(err, value.device)
        grads = [torch.autograd.grad(scores[:, j].sum(), leaf, retain_graph=j < n - 1)[0] for j in range(n)]
        return scores.detach().to(value.device), torch.stack(grads, dim=1)


def values_at(model: Model, sites: list[Site], args: tuple, kwargs: dict,
              replace: tuple[Site, torch.Tensor] | None = None, device: torch.device | None = None
              ) -> list[torch.Tensor]:
    """One no-grad forward: the values at ``sites`` (in execution order), with one site's value replaced; each
    where its site lives, or moved to ``device``."""
    with torch.no_grad(), model.trace(*args, **kwargs):
        if replace is not None:
            replace[0].write(model, replace[1])
        values = [s.read(model).detach().save() for s in sites]
    return values if device is None else [v.to(device) for v in values]


def item_gradients(prep: Any, where: Site, value: torch.Tensor, item: torch.Tensor, n_out: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (R, n_out), gradients (R, n_out, ...)) of rows of ``prep``'s items (``item``) with ``where``'s value
    set to ``value``: one gradient of the summed target when ``n_out == 1``, else one per target token."""
    args, kwargs = prep.call(item)
    if n_out == 1:
        scores, grad = gradient_at(prep.model, where, value, lambda out: prep.scores(out, item).sum(-1), args, kwargs)
        return scores.unsqueeze(1), grad.unsqueeze(1)
    return jacobian_at(prep.model, where, value, lambda out: prep.scores(out, item), args, kwargs)
