"""The methods a dataset run calls, by name, their options, and one chunk of examples through one method call.

>>> from attrib.runs.methods import canonical, check_options
>>> canonical("ig"), canonical("Guided-Backprop")
('integrated_gradients', 'guided_backprop')
>>> check_options("gradient_shap", {"baseline": "zeros", "n_samples": 4})    # --baseline fits gradient_shap too
{'baselines': 'zeros', 'n_samples': 4}

Every method that attributes a prompt's tokens (one :class:`~attrib.results.Attribution` per prompt) is here,
and the two patching methods, which take pairs: a line's ``corrupted`` prompt with its ``prompt`` (the clean
one), one :class:`~attrib.results.PatchingResult` per pair. A chunk's examples go to the method in as few
calls as their targets allow (a batch needs one target length, and targets and contrasts given for all its
prompts or for none), so the method's own batching runs them together.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Sequence

from ..core.model import Model
from ..errors import RunError
from ..methods import (activation_patching, attribution_patching, deconvolution, deeplift, gim, gradient_shap,
                       guided_backprop, integrated_gradients, lrp, saliency)
from ..results.base import Result
from .dataset import Example

__all__ = ["METHODS", "PAIRED", "ALIASES", "canonical", "check_options", "option_names", "switch_names",
           "check_examples", "run_chunk"]

METHODS: dict[str, Callable[..., Any]] = {
    "integrated_gradients": integrated_gradients, "saliency": saliency, "lrp": lrp, "deeplift": deeplift,
    "guided_backprop": guided_backprop, "deconvolution": deconvolution, "gim": gim, "gradient_shap": gradient_shap,
    "attribution_patching": attribution_patching, "activation_patching": activation_patching,
}
PAIRED = ("attribution_patching", "activation_patching")
ALIASES = {"ig": "integrated_gradients", "atp": "attribution_patching"}
# set per line (target, contrast, corrupted) or by the run itself, never as a method option
_RESERVED = ("model", "inputs", "clean", "corrupted", "target", "contrast", "metric")
_HIDDEN = ("method",)           # integrated_gradients' Captum-style alias of rule=


def canonical(name: Any) -> str:
    """The method's name in :data:`METHODS` (aliases such as ``ig``, dashes for underscores, any case)."""
    key = name.strip().lower().replace("-", "_") if isinstance(name, str) else ""
    key = ALIASES.get(key, key)
    if key not in METHODS:
        known = ", ".join([*METHODS, *(f"{a} (= {m})" for a, m in ALIASES.items())])
        raise RunError(f"method {name!r:.40} is not one a dataset run can call; pass one of {known}.")
    return key


def option_names(method: str) -> list[str]:
    """The keywords of ``method`` that a run passes on (every keyword but the per-line ones)."""
    params = inspect.signature(METHODS[method]).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _RESERVED + _HIDDEN]


def switch_names(method: str) -> list[str]:
    """The options of ``method`` that are on/off switches (a boolean default): ``--per-token`` alone means true."""
    params = inspect.signature(METHODS[method]).parameters
    return [name for name in option_names(method) if isinstance(params[name].default, bool)]


def check_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for ``method``, sorted by name: each a keyword of the method and a JSON value (it is recorded
    in ``run.json`` to check a resumed run); ``baseline`` means ``baselines`` for a method that takes that."""
    names = option_names(method)
    checked: dict[str, Any] = {}
    for key, value in options.items():
        name = "baselines" if key == "baseline" and "baselines" in names else key
        if name in _RESERVED:
            raise RunError(f"{key}= is not a run option: target, contrast and the corrupted prompt are given per "
                           "line of the prompts file, and a run has no custom metric.")
        if name not in names:
            raise RunError(f"{method} has no option {key!r} (--{key.replace('_', '-')}); its options are "
                           f"{', '.join(names)}.")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise RunError(f"{key}={value!r:.40} is not a JSON value; a run records its options in run.json, so "
                           "they are numbers, strings, booleans, null or lists of them.") from None
        checked[name] = value
    return dict(sorted(checked.items()))


def run_chunk(model: Model, method: str, examples: Sequence[Example], options: dict[str, Any]) -> list[Result]:
    """One result per example, in the examples' order, from as few calls of ``method`` as their targets allow."""
    paired = method in PAIRED
    check_examples(method, examples)
    results: list[Result | None] = [None] * len(examples)
    for group in _groups(model, examples):
        chosen = [examples[i] for i in group]
        targets = _same_or_list([e.target for e in chosen])
        contrasts = _same_or_list([e.contrast for e in chosen])
        prompts = [e.prompt for e in chosen]
        if paired:
            found = METHODS[method](model, prompts, [e.corrupted for e in chosen], target=targets,
                                    contrast=contrasts, **options)
            out = [found.pair(j) for j in range(len(chosen))]
        else:
            out = METHODS[method](model, prompts, target=targets, contrast=contrasts, **options)
        for i, result in zip(group, out):
            results[i] = result
    return [r for r in results if r is not None]


def check_examples(method: str, examples: Sequence[Example]) -> None:
    """A pair method needs every example's corrupted prompt (other methods ignore it)."""
    missing = [e for e in examples if e.corrupted is None] if method in PAIRED else []
    if missing:
        raise RunError(f"{method} patches a clean prompt with a corrupted one, but line {missing[0].line} (id "
                       f"{missing[0].id!r}) has no 'corrupted'; give every line a 'corrupted' prompt.")


def _same_or_list(values: list[Any]) -> Any:
    """None when no example gives the value, else one per example (the method's per-item form)."""
    return None if all(v is None for v in values) else values


def _groups(model: Model, examples: Sequence[Example]) -> list[list[int]]:
    """Indices of examples that one call can take together, groups in order of their first example."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, e in enumerate(examples):
        key = (_length(model, e.target), e.contrast is None)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _length(model: Model, value: str | list[int] | None) -> int:
    """How many tokens a target has (0 for none: the model's own prediction)."""
    if value is None:
        return 0
    if isinstance(value, list):
        return len(value)
    tokenizer = getattr(model, "tokenizer", None)
    return len(tokenizer(value, add_special_tokens=False)["input_ids"]) if tokenizer is not None else 1
