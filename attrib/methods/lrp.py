"""Layer-wise relevance propagation: one forward and one backward in which modules follow LRP rules.

>>> import torch, attrib
>>> _ = torch.manual_seed(0)
>>> net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.ReLU(),
...                                        torch.nn.Linear(4, 2, bias=False)))
>>> x = torch.tensor([[1.0, 2.0, -1.0]])
>>> r = attrib.lrp(net, x, target=0, rules="epsilon", epsilon=0.0)
>>> bool(torch.isclose(r.scores.sum(), net.module(x)[0, 0]))      # LRP-0 without biases: conserved
True

Bach et al. 2015 ("On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
Propagation"); for transformers AttnLRP (Achtibat et al. 2024, ICML) and CP-LRP (Ali et al. 2022, ICML).

- ``rules``: a composite name (:data:`attrib.methods.composites.NAMES`), a
  :class:`~attrib.methods.composites.Composite`, or a list of ``(selector, rule)`` pairs. Default: ``"attnlrp"``
  for language models, ``"epsilon"`` for plain models. ``epsilon=``, ``gamma=``, ``low=``, ``high=`` set the
  named zennit-style composites' parameters (their defaults are zennit's: ε = 1e-6, γ = 0.25);
  ``"epsilon_gamma_box"`` takes the bounds of the box rule from ``low`` / ``high``, or, left out, from the
  smallest and largest value of the inputs given.
- Relevance is gradient × input at the attributed values (the input embeddings of a language model, summed per
  token for ``.scores``; a plain model's input, element by element), with the backward's rules installed for
  the call only (:mod:`attrib.core.rules`), so the relevance of the target's score starts as that score.
- ``.delta`` is Σ relevance − the target's score: what biases, constants and non-conservative operations
  (softmax) absorbed (0 for a conservative composite on a model without biases).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.model import Model
from ..core.release import releasing
from ..core.rules import Rules
from ..errors import MethodError
from ..models.language import LanguageModel
from ..results import Attribution
from .collect import attributions
from .batching import plan_key, run_rows
from .checks import check_batch_size, check_finite_inputs, check_finite_values, check_grad_mode
from .composites import composite
from .inputs import Inputs, prepare
from .passes import gradient_at

__all__ = ["lrp", "gradient_with_rules"]


@releasing
def lrp(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None, score: str = "logit",
        metric: Callable[[Any], torch.Tensor] | None = None, rules: Any = None, epsilon: float | None = None,
        gamma: float | None = None, low: Any = None, high: Any = None,
        batch_size: int | None = None) -> Attribution | list[Attribution]:
    """Relevance of the target's score for each input position under LRP ``rules``; see the module docstring."""
    check_grad_mode("lrp", model)
    batch_size = check_batch_size(batch_size)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    name = rules if rules is not None else ("attnlrp" if isinstance(model, LanguageModel) else "epsilon")
    options = {k: v for k, v in dict(epsilon=epsilon, gamma=gamma, low=low, high=high).items() if v is not None}
    if name == "epsilon_gamma_box":
        options.setdefault("low", prep.x.min().item())
        options.setdefault("high", prep.x.max().item())
    if options and not (isinstance(name, str) and name in ("epsilon", "gamma", "zplus", "epsilon_plus",
                                                            "epsilon_alpha2_beta1", "epsilon_gamma_box")):
        raise MethodError(f"{', '.join(f'{k}=' for k in options)} set{'s' if len(options) == 1 else ''} a parameter of "
                          f"the named zennit-style composites, not of rules={name!r:.40}; build the rules with "
                          "those parameters instead.")
    try:
        comp = composite(name, **options)
    except TypeError as err:
        raise MethodError(f"rules={name!r}: {err}") from None
    pairs = comp.assign(model.module)
    if not pairs:
        raise MethodError(f"rules={name!r:.40} put no rule on any module of {type(model.module).__name__}, so LRP would "
                          "be plain gradient × input; choose rules that match its modules.")
    with comp.context(model.module):
        relevance, scores = gradient_with_rules(model, prep, pairs, batch_size, "lrp", times_input=True)
    return attributions(prep, relevance, "lrp", totals=scores, info=dict(rules=getattr(comp, "name", str(name)), **options))


def gradient_with_rules(model: Model, prep: Inputs, pairs: list, batch_size: int | None, key: str,
                        times_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's gradient (× input with ``times_input``) with ``pairs`` of (module, rule, path) installed
    for this call only, and its target's score: (values (items, ...), scores (items,))."""
    x = prep.x
    if not x.is_floating_point():
        raise MethodError(f"the input is {x.dtype}, which has no gradient; attribute to an embedding instead (for a "
                          "language model: attrib.LanguageModel(hf_model, tokenizer)).")
    found: dict[int, torch.Tensor] = {}

    def run(chunk: torch.Tensor) -> torch.Tensor:
        args, kwargs = prep.call(chunk)
        out, grad = gradient_at(model, prep.site, x[chunk], lambda o: prep.scores(o, chunk).sum(-1), args, kwargs)
        for i, s in zip(chunk.tolist(), out.reshape(len(chunk), -1).sum(-1)):
            found[i] = s
        value = grad * x[chunk] if times_input else grad
        return value.to(torch.promote_types(value.dtype, torch.float32)).unsqueeze(1)

    with Rules(pairs):
        sums = run_rows(run, prep.n_items, lambda chunk: chunk, prep.n_items, batch_size, like=x,
                        remember=plan_key(model, (key,), x))
    scores = torch.stack([found[i] for i in range(prep.n_items)])
    check_finite_values(key, sums[:, 0], prep)
    return sums[:, 0], scores
