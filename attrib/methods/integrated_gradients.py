"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(3, 2))
>>> x = torch.tensor([[1.0, 2.0, 3.0]])
>>> a = attrib.integrated_gradients(net, x, target=0, n_steps=4)
>>> torch.allclose(a.values, x[0] * net.module.weight[0].detach())     # linear model: IG = (x − b)·w
True

attribution = (x − b) ⊙ Σ_k w_k ∂f/∂x (b + α_k (x − b)), with Captum's nodes α_k and weights w_k.
Every interpolation point is a row of one batched forward/backward on the model's device (prompts ×
steps × target tokens when ``per_token``); the backward is the core's pruned one (no parameter
gradients) and only the logits the target needs are computed.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..core.envoy import Envoy
from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError, NonFiniteAttributionError
from ..models.ids import as_int
from ..models.language import LanguageModel
from ..models.sites import Site, site
from ..results import Attribution
from .baselines import baseline_for
from .batching import plan_key, run_rows
from .compiled import CompileOptions, check_supported, gradient_passes, options_of
from .inputs import Inputs, check_batch_size, check_finite_inputs, check_grad_mode, nonfinite, prepare, token_strings
from .passes import values_at
from .ig_adaptive import AUTO, DEFAULT_BUDGET, check_auto, integrate_auto
from .quadrature import quadrature

__all__ = ["integrated_gradients", "FIXED_STEPS"]

FIXED_STEPS = 50            # Captum's default n_steps, used when a rule is named without n_steps


@releasing
def integrated_gradients(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None,
                         score: str = "logit", metric: Callable | None = None, baseline: Any = "auto",
                         n_steps: int | str | None = None, rule: str | None = None, layer: str | Site | Envoy | None = None,
                         batch_size: int | None = None, per_token: bool = False,
                         method: str | None = None, tol: float = 0.01, max_evaluations: int = DEFAULT_BUDGET,
                         compile: bool | CompileOptions = False) -> Attribution | list[Attribution]:
    """Integrated gradients of a target score w.r.t. the input embeddings (or a site such as ``layer``'s
    output). One result per input item (:mod:`attrib.methods.inputs`).

    >>> import attrib
    >>> model = attrib.load_demo_model(device="cpu")
    >>> a = attrib.integrated_gradients(model, "The capital of France is", target=" Paris", n_steps=16)
    >>> a.tokens[-1], a.target, a.scores.shape
    (' is', ' Paris', torch.Size([5]))

    - ``inputs``, ``target``, ``contrast``, ``score``, ``metric``: as in every method
      (:mod:`attrib.methods.inputs`, :mod:`attrib.methods.targets`).
    - ``baseline``: :mod:`attrib.methods.baselines`. The default ``"auto"`` is the pad embedding at every prompt
      position but the first, which is held at its own embedding (a decoder's attention sink: moving it makes
      the path jump); ``"zeros"``, ``"pad"``, a token id or a tensor are the alternatives (on plain models
      ``"auto"`` is ``"zeros"``).
    - ``n_steps``: by default (``None``) ``"auto"`` on float32 / float64 models (16-bit models: 50 fixed steps,
      their rounding keeps a 1% tolerance out of reach): adaptive Gauss–Kronrod steps per prompt
      (:mod:`attrib.methods.adaptive`) until the completeness error is within ``tol`` × |f(x) − f(b)|, using at
      most ``max_evaluations`` points; ``.info`` then holds ``evaluations``, ``converged`` and the
      ``intervals`` used, and an unmet tolerance warns (:class:`~attrib.ConvergenceWarning`) with the measured
      error. An int, or a named ``rule``, gives a fixed quadrature equal to Captum's (``n_steps=50`` when only
      the rule is named): ``riemann_left``, ``riemann_right``, ``riemann_middle``, ``riemann_trapezoid`` and
      ``gausslegendre`` (the fixed default, which never evaluates the end points). ``method=`` is accepted as
      Captum's name for ``rule`` (a result's ``.method`` is the attribution method, ``"integrated_gradients"``).
      Captum's own defaults are ``n_steps=50, baseline="zeros"``.
    - ``.info["completeness"]``: |delta| / |f(x) − f(b)| (the worst target token's), and
      ``.info["evaluations"]``: the points the model was run at, end points included.
    - ``layer``: a site name (``"resid_post.3"``, :mod:`attrib.models.sites`), a module path
      (``"model.layers.3"``) or an envoy: layer IG, interpolating that value between its values on the
      baseline run and on the input run.
    - ``per_token=True`` with a multi-token target: an outputs × inputs matrix from the same batched passes.
    - ``batch_size``: rows (items × steps) per pass; ``None`` runs all at once and halves on out-of-memory.
    - ``compile=True`` (or :class:`~attrib.methods.compiled.CompileOptions`): the passes call the Hugging Face model
      directly under ``torch.compile``, in bucketed shapes (:mod:`attrib.methods.compiled`); fixed steps on a
      language model's input embeddings only (no ``layer``, ``metric``, ``per_token`` or ``n_steps="auto"``).

    ``.values`` has the attributed value's shape per item; on a language model ``.scores`` sums it over the
    hidden dimension (one number per token), on a plain model ``.scores`` is ``.values``.
    """
    if method is not None and rule is not None and method != rule:
        raise MethodError(f"rule={rule!r} and method={method!r} disagree; method= is Captum's name for rule=, "
                          "pass one of them.")
    check_grad_mode("integrated_gradients", model)
    if not isinstance(per_token, (bool, np.bool_)):
        raise MethodError(f"per_token must be True or False, got {per_token!r:.40}; pass per_token=True for one row "
                          "of attributions per target token.")
    per_token = bool(per_token)
    named = rule if method is None else method
    rule = named or "gausslegendre"
    if n_steps is None:         # adaptive, unless a rule is named or the model is 16-bit: Captum's 50 steps
        n_steps = AUTO if named is None and not _sixteen_bit(model) else FIXED_STEPS
    auto = isinstance(n_steps, str) and n_steps == AUTO
    if auto and named is not None:
        raise MethodError(f"n_steps='auto' chooses its own nodes (adaptive Gauss–Kronrod), so {'rule' if method is None else 'method'}="
                          f"{named!r} does not apply; drop it, or pass a number of steps such as n_steps=50.")
    if auto:
        tol, max_evaluations = check_auto(tol, max_evaluations)
        alphas, weights = [], []
    else:
        alphas, weights = quadrature(rule, n_steps, "rule" if method is None else "method")
    batch_size = check_batch_size(batch_size)
    options = options_of(compile)
    if options is not None:
        check_supported("integrated_gradients", model, layer=layer, metric=metric, per_token=per_token, n_steps=n_steps)
    prep = prepare(model, inputs, target=target, contrast=contrast, score=score, metric=metric, batch_size=batch_size)
    check_finite_inputs(prep)
    if per_token and prep.ids is None:
        raise MethodError("per_token=True needs a token target, not a metric.")
    where = prep.site if layer is None else site(model, layer)
    if where.name == prep.site.name and not prep.x.is_floating_point():
        raise MethodError(f"the inputs are {prep.x.dtype}, which has no gradient; pass layer=... (a site name or the "
                          "embedding module's path) to attribute to a module's output.")
    at_layer = where.name != prep.site.name
    layer_name = where.name if at_layer else None
    b_in = baseline_for(prep, baseline, layer_name) if prep.x.is_floating_point() else \
        _integer_baseline(prep, baseline, where.name)
    if not at_layer:
        x, b = prep.x, b_in
    else:
        x, b = _layer_value(prep, where, None, batch_size), _layer_value(prep, where, b_in, batch_size)
        if isinstance(model, LanguageModel) and (x.dim() < 3 or x.shape[1] < prep.n_prompt):
            raise MethodError(f"layer={where.name!r} has a value of shape {tuple(x.shape)}, not one vector per "
                              f"position of the {prep.n_prompt}-token prompt (the head computes only the last "
                              "positions); attribute to a site before it, e.g. 'resid_post.-1'.")
    n_out = prep.n_out if per_token else 1
    per_item: list[dict[str, Any]]
    if auto:
        attr, f_x, f_b, per_item = integrate_auto(prep, where, x, b, n_out, batch_size, tol, max_evaluations,
                                                  _point, _accumulation_dtype(x))
        rule = "gausskronrod"
    else:
        attr, f_x, f_b = _integrate(prep, where, x, b, alphas, weights, n_out, batch_size, options)
        per_item = [{"evaluations": len(alphas) + 2} for _ in range(prep.n_items)]
    delta = attr.flatten(2).sum(-1) - (f_x - f_b).to(attr.dtype)           # (items, n_out)
    # the host reads one small tensor, once the passes are done: whether every attribution is finite, and per
    # item |delta| relative to |f(x) − f(b)| (the worst output), f(x) and f(b) (each read alone was a wait)
    completeness = (delta.double().abs() / (f_x - f_b).double().abs().clamp(min=1e-300)).amax(dim=1)
    read = torch.cat([torch.isfinite(attr).all().double().view(1), completeness,
                      f_x.double().sum(1), f_b.double().sum(1)]).tolist()
    if not read[0]:
        _check_finite(attr, rule, baseline, (x, b, f_x, f_b), layer_name)
    n = prep.n_items
    info = {"rule": rule, "n_steps": AUTO if auto else len(alphas),
            "layer": "embeddings" if layer is None else where.name, "baseline": _baseline_info(baseline)}
    if options is not None:
        info["compile"] = True
    results = [_result(prep, i, attr[i], delta[i], per_token, at_layer,
                       {**info, **per_item[i], "completeness": read[1 + i], "f_x": read[1 + n + i],
                        "f_baseline": read[1 + 2 * n + i]})
               for i in range(n)]
    return results[0] if prep.single else results


def _sixteen_bit(model: Model) -> bool:
    """Whether the model computes in bfloat16 / float16, whose rounding (0.4% / 0.05% of every value, through
    every layer) keeps the completeness error of a 1% tolerance out of reach: measured on H200 with random
    SmolLM2-shape weights, adaptive steps used 531 of 1000 evaluations per prompt and half the prompts
    did not converge in bfloat16, against 62 evaluations and all converged in float32."""
    module = getattr(model, "module", None)      # not a Model: prepare() says so
    return isinstance(module, torch.nn.Module) and any(p.dtype in (torch.bfloat16, torch.float16)
                                                       for p in module.parameters())


def _baseline_info(baseline: Any) -> Any:
    """The baseline as a result's info records it: a name, a number, or "tensor"."""
    if isinstance(baseline, (str, float)):
        return baseline
    number = as_int(baseline)
    return "tensor" if number is None else number


def _describe(baseline: Any) -> str:
    """The user's baseline for a message: its repr, or a tensor's shape and dtype."""
    if isinstance(baseline, torch.Tensor):
        return f"<tensor of shape {tuple(baseline.shape)}, {baseline.dtype}>"
    return f"{baseline!r:.60}"


def _integer_baseline(prep: Inputs, baseline: Any, layer: str) -> torch.Tensor:
    """A plain model with integer inputs (layer IG on its own embedding): the baseline is an input of ids,
    checked against the model's embedding up front (the model would fail on an id outside it)."""
    x = prep.x
    expected = f"integer ids like the inputs, of their shape {tuple(x.shape)} or one that broadcasts to it"
    number = as_int(baseline)
    if isinstance(baseline, str) and baseline == "zeros":
        b = torch.zeros_like(x)
    elif number is not None:
        if not torch.iinfo(x.dtype).min <= number <= torch.iinfo(x.dtype).max:
            raise MethodError(f"baseline={number} does not fit the inputs' {x.dtype}; pass a valid id.")
        b = torch.full_like(x, number)
    elif isinstance(baseline, torch.Tensor):
        if baseline.is_floating_point() or baseline.is_complex() or baseline.dtype == torch.bool:
            raise MethodError(f"baseline={_describe(baseline)} with layer={layer!r}: the baseline is an input, "
                              f"so it must be {expected}; pass e.g. 'zeros' or a tensor of ids.")
        try:
            b = baseline.to(x).expand_as(x)
        except RuntimeError:
            raise MethodError(f"baseline={_describe(baseline)} with layer={layer!r}: the baseline is an input, so "
                              f"it must be {expected}; pass e.g. 'zeros' or a tensor of ids.") from None
    else:
        raise MethodError(f"baseline={_describe(baseline)} with layer={layer!r}: integer inputs take 'zeros', an id "
                          f"or a tensor of {expected}; pass one of those.")
    # the embedding that takes the inputs: the first one that every input id fits
    top = int(x.max())
    size = next((m.num_embeddings for m in prep.model.module.modules()
                 if isinstance(m, torch.nn.Embedding) and m.num_embeddings > top), None)
    bad = None if size is None else (b < 0) | (b >= size)
    if bad is not None and bool(bad.any()):
        raise MethodError(f"baseline={_describe(baseline)} with layer={layer!r} holds id {int(b[bad][0])}, outside "
                          f"the model's embedding of {size} rows; the baseline is still an input, so pass ids from 0 "
                          f"to {size - 1} (or 'zeros').")
    return b


def _layer_value(prep: Inputs, where: Site, replace: torch.Tensor | None, batch_size: int | None) -> torch.Tensor:
    """``where``'s value on every item (with ``prep.site``'s value replaced by ``replace``: the baseline's), from
    no-grad passes of ``batch_size`` rows (``None``: all at once, halved on out-of-memory)."""
    model = prep.model

    def run(rows: torch.Tensor) -> torch.Tensor:
        args, kwargs = prep.call(rows)
        value = values_at(model, [where], args, kwargs, None if replace is None else (prep.site, replace[rows]),
                          device=prep.x.device)[0]      # on the input device, where the integration runs
        if value.dim() == 0 or value.shape[0] != len(rows):
            raise MethodError(f"layer={where.name!r} has a value of shape {tuple(value.shape)} for {len(rows)} input "
                              "rows, not one value per row; attribute to a module whose output has the batch first.")
        return value

    return run_rows(run, prep.n_items, lambda rows: rows, prep.n_items, batch_size, like=prep.x,
                    remember=plan_key(model, ("layer values", where.name), prep.x))


def _integrate(prep: Inputs, where: Site, x: torch.Tensor, b: torch.Tensor, alphas: list[float],
               weights: list[float], n_out: int, batch_size: int | None, options: CompileOptions | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(attributions (items, n_out, ...), f(x), f(b) (items, n_out)) from batched passes over every point (compiled
    ones with ``options``: :mod:`attrib.methods.compiled`)."""
    model = prep.model
    # Two extra nodes with weight 0, alpha = 1 and alpha = 0: their scores are f(x) and f(b) for the
    # completeness delta, from the same batched pass instead of another forward.
    nodes, node_weights = [*alphas, 1.0, 0.0], [*weights, 0.0, 0.0]
    n_nodes = len(nodes)
    acc = _accumulation_dtype(x)
    # made once, before any pass: a tensor made from a list inside a pass waits for the GPU to finish the queue
    node_alpha = torch.tensor(nodes, dtype=acc, device=x.device)
    node_weight = torch.tensor(node_weights, dtype=acc, device=x.device)
    # f(x) and f(b) of item i in rows 2i and 2i + 1; every other row's score goes to the last row, a sink: no
    # boolean indexing (it reads the mask on the host, so the host waited for each pass before queuing the next),
    # and copied, not added (a pass retried after running out of memory writes its rows again)
    ends = torch.zeros(2 * prep.n_items + 1, n_out, dtype=torch.float64, device=x.device)

    def run(rows: torch.Tensor) -> torch.Tensor:
        item, step = rows // n_nodes, rows % n_nodes
        alpha = node_alpha[step].view(-1, *[1] * (x.dim() - 1))
        value = _point(x[item], b[item], alpha)
        scores, grad = gradients(prep, where, value, item, n_out)
        slot = torch.where(step >= len(alphas), 2 * item + step - len(alphas), 2 * prep.n_items)
        ends.index_copy_(0, slot.to(ends.device), scores.to(device=ends.device, dtype=torch.float64))
        grad = grad.to(acc)
        w = node_weight.to(grad.device)[step].view(-1, *[1] * (grad.dim() - 1))
        return torch.where(w > 0, grad * w, torch.zeros((), dtype=grad.dtype, device=grad.device))

    remember = plan_key(model, ("ig", where.name, n_out), x, prep.x.shape[1])
    with gradient_passes(prep, options, remember, batch_size, prep.n_items * n_nodes) as gradients:
        summed = run_rows(run, prep.n_items * n_nodes, lambda rows: rows // n_nodes, prep.n_items, batch_size,
                          like=x, remember=remember)                       # (items, n_out, ...)
    attr = (x.to(acc) - b.to(acc)).unsqueeze(1) * summed
    ends = ends[:-1].view(prep.n_items, 2, n_out)
    return attr, ends[:, 0], ends[:, 1]


def _result(prep: Inputs, i: int, attr: torch.Tensor, delta: torch.Tensor, per_token: bool, at_layer: bool,
            info: dict[str, Any]) -> Attribution:
    """Item ``i``'s Attribution from its (n_out, ...) attributions."""
    tokens = list(prep.labels[i])
    if isinstance(prep.model, LanguageModel):
        keep = prep.keep[i].to(attr.device)
        if at_layer and attr.dim() >= 3 and attr.shape[1] > prep.n_prompt:
            # a layer's value at the continuation's positions moves with the prompt too: keep those columns
            # (the teacher-forced target tokens) so that the attributions add up to f(x) − f(b)
            keep = torch.cat([keep, torch.arange(prep.n_prompt, attr.shape[1], device=keep.device)])
            tokens += token_strings(prep.model, prep.targets[i].ids[: attr.shape[1] - prep.n_prompt])
        values = attr[:, keep]                                               # (n_out, tokens, d)
        scores = values.flatten(2).sum(-1)
    else:
        values = attr
        scores = values
    common = dict(tokens=tokens, target=prep.describe(i), method="integrated_gradients", info=info)
    if per_token:
        return Attribution(scores=scores, values=values, delta=delta, output_tokens=prep.output_labels[i], **common)
    return Attribution(scores=scores[0], values=values[0], delta=delta[0], **common)


def _point(x: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """b + α (x − b), computed in α's (accumulation) dtype and rounded once to the model's."""
    return (b.to(alpha.dtype) + alpha * (x.to(alpha.dtype) - b.to(alpha.dtype))).to(x.dtype)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """Steps are weighted and summed in at least float32: a 16-bit running sum loses the small terms."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_finite(attr: torch.Tensor, rule: str, baseline: Any,
                  ends: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], layer: str | None) -> None:
    """Non-finite attributions: say why — a non-finite layer value or score on the input or baseline, or the
    quadrature (advice naming another rule than the one in use)."""
    if torch.isfinite(attr).all():
        return
    x, b, f_x, f_b = ends
    base = f"baseline={_describe(baseline)}"
    checks = [(f_x, "the target score on the inputs"), (f_b, f"the target score on {base}")]
    if layer is not None:       # the inputs and the baseline themselves were checked before the passes
        checks = [(x, f"the value of layer={layer!r} on the inputs"), (b, f"the value of layer={layer!r} on {base}"),
                  *checks]
    for value, what in checks:
        found = nonfinite(value)
        if found is not None:
            raise NonFiniteAttributionError(
                f"integrated gradients produced inf/NaN attributions because {what} has {found}; the model computes "
                "inf/NaN there, so check its weights (or pass another baseline).")
    if rule in ("riemann_left", "riemann_trapezoid"):
        hint = (f"rule={rule!r} evaluates the gradient at the baseline itself, where a zero baseline makes "
                "RMSNorm/LayerNorm gradients blow up; use rule='gausslegendre' (never evaluates the end points) or "
                "another baseline such as 'pad'")
    elif rule not in ("gausslegendre", "gausskronrod"):
        hint = "use rule='gausslegendre' (never evaluates the end points) or another baseline such as 'pad'"
    else:
        hint = ("the gradient is inf/NaN at a point inside the path, so pass another baseline (such as 'pad'), "
                "another n_steps, or a bounded score such as score='prob'")
    raise NonFiniteAttributionError(
        f"integrated gradients produced inf/NaN attributions with finite inputs ({base}, rule={rule!r}); {hint}.")
