"""Guided backpropagation and deconvolution: the gradient, with the backward of every ReLU changed.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU(),
...                                        torch.nn.Linear(2, 1, bias=False)))
>>> with torch.no_grad():
...     _ = net.module[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
...     _ = net.module[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
>>> x = torch.tensor([[1.0, 2.0]])
>>> attrib.guided_backprop(net, x, target=0).values.tolist()    # the negative gradient of unit 2 is dropped
[1.0, 0.0]
>>> attrib.deconvolution(net, x, target=0).values.tolist()
[1.0, 0.0]

- :func:`guided_backprop` (Springenberg et al. 2015, "Striving for Simplicity: The All Convolutional Net"):
  a ReLU passes back only positive gradients, and only where its input was positive.
- :func:`deconvolution` (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"): a
  ReLU passes back the positive part of the gradient arriving at it, wherever its input was.

As Captum's ``GuidedBackprop`` and ``Deconvolution``: the rules go on ``torch.nn.ReLU`` modules (a ReLU called as
a function is out of reach and keeps its gradient; a model with no ReLU module is refused), and the result is
the modified gradient at the input (``.values``; for a language model ``.scores`` is its norm per token, as in
saliency), not multiplied by the input.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.model import Model
from ..core.release import releasing
from ..core.rules import Call, Rule
from ..errors import MethodError
from ..results import Attribution
from .checks import check_batch_size, check_finite_inputs, check_grad_mode
from .inputs import prepare
from .collect import attributions
from .lrp import gradient_with_rules

__all__ = ["guided_backprop", "deconvolution", "GuidedReLU", "DeconvReLU"]


class GuidedReLU(Rule):
    """The ReLU's own backward, then only the positive part."""

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        return (grad_output * (call.input > 0).to(grad_output)).clamp(min=0)


class DeconvReLU(Rule):
    """The positive part of the gradient arriving at the ReLU, whatever its input."""

    def backward(self, grad_output: torch.Tensor, call: Call) -> torch.Tensor:
        return grad_output.clamp(min=0)


def _run(name: str, rule: Rule, model: Model, inputs: Any, target: Any, contrast: Any, score: str,
         metric: Callable | None, batch_size: int | None) -> Attribution | list[Attribution]:
    check_grad_mode(name, model)
    batch_size = check_batch_size(batch_size)
    pairs = [(m, rule, p) for p, m in model.module.named_modules() if isinstance(m, torch.nn.ReLU)]
    if not pairs:
        raise MethodError(f"{name} changes the backward of torch.nn.ReLU modules, and "
                          f"{type(model.module).__name__} has none (a ReLU called as a function cannot be reached); "
                          "use saliency for the plain gradient.")
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    values, _ = gradient_with_rules(model, prep, pairs, batch_size, name, times_input=False)
    return attributions(prep, values, name, norm=True)


@releasing
def guided_backprop(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
                    metric: Callable[[Any], torch.Tensor] | None = None,
                    batch_size: int | None = None) -> Attribution | list[Attribution]:
    """Guided backpropagation (Springenberg et al. 2015); see the module docstring."""
    return _run("guided_backprop", GuidedReLU(), model, inputs, target, contrast, score, metric, batch_size)


@releasing
def deconvolution(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
                  metric: Callable[[Any], torch.Tensor] | None = None,
                  batch_size: int | None = None) -> Attribution | list[Attribution]:
    """Deconvolution (Zeiler & Fergus 2014); see the module docstring."""
    return _run("deconvolution", DeconvReLU(), model, inputs, target, contrast, score, metric, batch_size)
