"""DeepLIFT with the Rescale rule: input and baseline in one batched pass, each non-linearity's gradient
replaced by the ratio of its output's and its input's differences between the two.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid()))
>>> r = attrib.deeplift(net, torch.tensor([[1.0, -2.0]]), target=0, baseline="zeros")
>>> abs(float(r.delta)) < 1e-6                                   # sums to f(x) − f(baseline)
True

Shrikumar et al. 2017, "Learning Important Features Through Propagating Activation Differences". As Captum's
``DeepLift``: rows are the inputs followed by their baselines; a rule (the Rescale rule) goes on every
element-wise non-linear module — torch's ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus and, beyond Captum,
GELU, SiLU and the activations of ``transformers.activations`` — and where the input difference is below 1e-10
the module's own gradient is kept. The attribution is the modified gradient × (input − baseline), so that it
sums to f(x) − f(baseline) (``.delta`` is the difference, 0 up to rounding for networks whose non-linearities
are all modules). ``torch.nn.Softmax`` modules get the Rescale rule with its multipliers centred along the
softmax's dimension (Captum centres them over the whole tensor). Max-pooling keeps its gradient (Captum has a
rule of its own for it). A language model's attention softmax and norms are functions, not modules, and keep
their gradients: DeepLIFT there is an approximation whose ``.delta`` says by how much.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.model import Model
from ..core.release import releasing
from ..core.rules import Call, Rule, Rules
from ..errors import MethodError
from ..results import Attribution
from .baselines import baseline_for
from .batching import plan_key, run_rows
from .collect import attributions
from .checks import check_batch_size, check_finite_inputs, check_finite_values, check_grad_mode
from .composites import ACTIVATIONS, is_activation
from .inputs import prepare
from .passes import gradient_at

__all__ = ["deeplift", "Rescale"]

EPS = 1e-10


class Rescale(Rule):
    """Rows are (inputs; baselines): the gradient times Δoutput / Δinput, or the module's own where |Δinput| <
    1e-10. ``dim``: centre the multipliers along this dimension (softmax)."""

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        x, y = call.input, call.output
        if x.shape[0] % 2 or x.shape != y.shape:
            raise MethodError(f"DeepLIFT's Rescale rule at {call.name} expected (inputs; baselines) rows of an "
                              f"element-wise module, got input {tuple(x.shape)} and output {tuple(y.shape)}.")
        dx = torch.cat(2 * [x[: len(x) // 2] - x[len(x) // 2:]])
        dy = torch.cat(2 * [y[: len(y) // 2] - y[len(y) // 2:]])
        own = call.vjp(grad_output)
        safe = torch.where(dx.abs() < EPS, torch.ones_like(dx), dx)
        grad = torch.where(dx.abs() < EPS, own, grad_output * dy / safe)
        if self.dim is not None:
            grad = grad - grad.mean(self.dim, keepdim=True)
        return grad


def _pairs(module: torch.nn.Module) -> list[tuple]:
    out = []
    for path, m in module.named_modules():
        if isinstance(m, torch.nn.Softmax):
            out.append((m, Rescale(dim=m.dim if m.dim is not None else -1), path))
        elif isinstance(m, ACTIVATIONS) or is_activation(m):
            out.append((m, Rescale(), path))
    return out


@releasing
def deeplift(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
             metric: Callable[[Any], torch.Tensor] | None = None, baseline: Any = "zeros",
             batch_size: int | None = None) -> Attribution | list[Attribution]:
    """DeepLIFT (Rescale) of the target's score against ``baseline``; see the module docstring. ``baseline`` as
    in :func:`attrib.integrated_gradients`; ``batch_size`` counts items (each takes two rows)."""
    check_grad_mode("deeplift", model)
    batch_size = check_batch_size(batch_size)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    x = prep.x
    if not x.is_floating_point():
        raise MethodError(f"the input is {x.dtype}, which has no gradient; attribute to an embedding instead.")
    b = baseline_for(prep, baseline)
    pairs = _pairs(model.module)
    diffs: dict[int, torch.Tensor] = {}

    def run(chunk: torch.Tensor) -> torch.Tensor:
        n = len(chunk)
        items = torch.cat([chunk, chunk])
        args, kwargs = prep.call(items)
        scores, grad = gradient_at(model, prep.site, torch.cat([x[chunk], b[chunk]]),
                                   lambda out: prep.scores(out, items).sum(-1), args, kwargs)
        for i, s, s0 in zip(chunk.tolist(), scores[:n].reshape(n, -1).sum(-1), scores[n:].reshape(n, -1).sum(-1)):
            diffs[i] = s - s0
        value = grad[:n] * (x[chunk] - b[chunk])
        return value.to(torch.promote_types(value.dtype, torch.float32)).unsqueeze(1)

    with Rules(pairs):
        sums = run_rows(run, prep.n_items, lambda chunk: chunk, prep.n_items, batch_size, like=x,
                        remember=plan_key(model, ("deeplift",), x))
    values = sums[:, 0]
    check_finite_values("deeplift", values, prep)
    totals = torch.stack([diffs[i] for i in range(prep.n_items)])
    info = dict(baseline=baseline if isinstance(baseline, (str, int, float)) else "tensor")
    return attributions(prep, values, "deeplift", totals=totals, info=info)
