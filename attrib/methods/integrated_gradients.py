"""Integrated gradients (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep Networks").

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(3, 2))
>>> x = torch.tensor([[1.0, 2.0, 3.0]])
>>> a = attrib.integrated_gradients(net, x, target=0, n_steps=4)
>>> torch.allclose(a.values, x * net.module.weight[0].detach())     # linear model: IG = (x − b)·w
True

attribution = (x − b) ⊙ Σ_k w_k ∂f/∂x (b + α_k (x − b)), with Captum's nodes α_k and weights w_k.
Every interpolation point is a row of one batched forward/backward on the model's device (prompts ×
steps × target tokens when ``per_token``); the backward is the core's pruned one (no parameter
gradients) and only the logits the target needs are computed.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..core.envoy import Envoy
from ..errors import MethodError, NonFiniteAttributionError
from ..core.release import releasing
from ..core.model import LanguageModel, Model
from .batching import run_rows
from .common import (Prepared, embedding_envoy, envoy_for, first_tensor, gradient_at, jacobian_at,
                     lm_kwargs, prepare, replace_first, token_strings)
from .quadrature import quadrature
from .result import Attribution

__all__ = ["integrated_gradients"]


@releasing
def integrated_gradients(model: Model, inputs: Any, *, target: Any = None, contrast: Any = None,
                         score: str = "logit", metric: Callable | None = None, baseline: Any = "zeros",
                         n_steps: int = 50, method: str = "gausslegendre", layer: str | Envoy | None = None,
                         batch_size: int | None = None, per_token: bool = False) -> Attribution | list[Attribution]:
    """Integrated gradients of a target score w.r.t. the input embeddings (or ``layer``'s output).

    >>> import attrib
    >>> model = attrib.load_demo_model(device="cpu")
    >>> a = attrib.integrated_gradients(model, "The capital of France is", target=" Paris", n_steps=16)
    >>> a.tokens[-1], a.target, a.scores.shape
    (' is', ' Paris', torch.Size([5]))

    - Language models: ``inputs`` is a prompt or a list of prompts (one result each, padded batches);
      ``target``/``contrast``/``score``/``metric`` as in :mod:`attrib.methods.targets`; ``baseline`` is
      ``"zeros"``, ``"pad"`` (the pad/eos token's embedding), a token id, or a tensor of the embeddings' shape.
    - Generic ``attrib.Model``: ``inputs`` is a float tensor (batch first); ``target`` a class index or a
      callable on the output returning (batch,) scores (None: each row's top class); ``baseline`` ``"zeros"``,
      a number or a tensor.
    - ``layer`` (a path such as ``"model.layers.3"`` or an envoy): layer IG, interpolating that module's
      output between its values on the baseline run and on the input run.
    - ``per_token=True`` with a multi-token target: an outputs × inputs matrix from the same batched passes.
    - ``batch_size``: rows per pass; ``None`` runs all at once and halves on out-of-memory.
    """
    alphas, weights = quadrature(method, n_steps)
    if isinstance(model, LanguageModel):
        return _lm(model, inputs, target, contrast, score, metric, baseline, alphas, weights, layer,
                   batch_size, per_token, method)
    return _generic(model, inputs, target, baseline, alphas, weights, layer, batch_size, method)


# -- language models ----------------------------------------------------------------------------
def _baseline_embeddings(model: LanguageModel, prep: Prepared, x: torch.Tensor, baseline: Any) -> torch.Tensor:
    """x with the prompt's (non-pad) positions replaced by the baseline's embeddings."""
    n, interp = prep.n_prompt, ~prep.pad
    if isinstance(baseline, str) and baseline == "zeros":
        fill = torch.zeros_like(x[:, :n])
    elif isinstance(baseline, str) and baseline == "pad" or isinstance(baseline, int) and not isinstance(baseline, bool):
        if isinstance(baseline, str):
            tok = model.tokenizer
            token = getattr(tok, "pad_token_id", None) if tok is not None else None
            token = token if token is not None else getattr(model.module.config, "eos_token_id", None)
            if token is None:
                raise MethodError("baseline='pad' needs a pad or eos token; pass a token id or 'zeros'.")
        else:
            token = baseline
        emb = model.module.get_input_embeddings()
        if not 0 <= int(token) < emb.weight.shape[0]:
            raise MethodError(f"baseline token id {token} is outside the vocabulary of size {emb.weight.shape[0]}.")
        fill = emb.weight[int(token)].detach().to(x.dtype).expand_as(x[:, :n])
    elif isinstance(baseline, torch.Tensor):
        want = tuple(x[:, :n].shape)
        b = baseline.to(device=x.device, dtype=x.dtype)
        if b.dim() == 2:
            b = b.unsqueeze(0)
        if b.shape[1:] != x[:, :n].shape[1:] or b.shape[0] not in (1, x.shape[0]):
            raise MethodError(
                f"baseline has shape {tuple(baseline.shape)}; expected the prompt embeddings' shape {want} "
                f"(or {want[1:]})."
            )
        fill = b.expand_as(x[:, :n])
    else:
        raise MethodError(f"baseline={baseline!r} is not 'zeros', 'pad', a token id or a tensor.")
    out = x.clone()
    out[:, :n] = torch.where(interp.unsqueeze(-1), fill, x[:, :n])
    return out


def _values_at(model: Model, envoys: list[Envoy], kwargs: dict, replace: dict[int, torch.Tensor] | None = None
               ) -> list[torch.Tensor]:
    """First-tensor outputs of ``envoys`` in one no-grad pass (``replace``: index -> new output)."""
    got = []
    with torch.no_grad(), model.trace(**kwargs):
        for i, envoy in enumerate(envoys):
            value = envoy.output
            if replace and i in replace:
                envoy.output = replace_first(value, replace[i])
                value = envoy.output
            got.append(first_tensor(value).detach().save())
    return got


def _lm(model: LanguageModel, inputs: Any, target: Any, contrast: Any, score: str, metric: Callable | None,
        baseline: Any, alphas: list[float], weights: list[float], layer: Any, batch_size: int | None,
        per_token: bool, method: str) -> Attribution | list[Attribution]:
    prep = prepare(model, inputs, target, contrast, score, metric)
    if per_token and metric is not None:
        raise MethodError("per_token=True needs a token target, not a metric.")
    emb = embedding_envoy(model)
    where = emb if layer is None else envoy_for(model, layer)
    n_out = max(1, prep.n_out) if per_token else 1
    kwargs = lm_kwargs(model, prep.input_ids, prep.attention_mask, prep.keep)
    with torch.no_grad():
        x_emb = emb.module(prep.input_ids).detach()
    b_emb = _baseline_embeddings(model, prep, x_emb, baseline)
    if where is emb:
        x, b = x_emb, b_emb
    else:
        x = _values_at(model, [where], kwargs)[0]
        b = _values_at(model, [emb, where], kwargs, replace={0: b_emb})[1]
    P = x.shape[0]
    ids, contrast_ids, tgt = prep.target_ids(), prep.contrast_ids(), prep.targets[0]
    # Two extra nodes with weight 0, alpha = 1 and alpha = 0: their scores are f(x) and f(b) for the
    # completeness delta, from the same batched pass instead of another forward.
    nodes, node_weights = [*alphas, 1.0, 0.0], [*weights, 0.0, 0.0]
    n_nodes = len(nodes)
    ends = torch.zeros(P, n_out, 2, dtype=torch.float64, device=x.device)

    acc = _accumulation_dtype(x)
    per_row = n_out if per_token else 1          # with per_token, every row scores all target tokens at once

    def run(rows: torch.Tensor) -> torch.Tensor:
        prompt, step = rows // n_nodes, rows % n_nodes
        alpha = torch.tensor(nodes, dtype=acc, device=x.device)[step].view(-1, *[1] * (x.dim() - 1))
        value = _point(x[prompt], b[prompt], alpha)
        row_kwargs = lm_kwargs(model, prep.input_ids[prompt], prep.attention_mask[prompt], prep.keep)

        def score_fn(output: Any) -> torch.Tensor:
            per = _row_scores(tgt, output.logits, ids[prompt], None if contrast_ids is None else contrast_ids[prompt])
            return per if per_token else per.sum(-1, keepdim=True)

        if per_row == 1:
            scores, grad = gradient_at(model, where, value, lambda out: score_fn(out)[:, 0], (), row_kwargs)
            scores, grad = scores.unsqueeze(1), grad.unsqueeze(1)
        else:
            scores, grad = jacobian_at(model, where, value, score_fn, row_kwargs)     # (R, n), (R, n, T, d)
        end = step >= len(alphas)
        ends[prompt[end], :, step[end] - len(alphas)] = scores[end].double()
        grad = grad.to(acc)
        w = torch.tensor(node_weights, dtype=grad.dtype, device=grad.device)[step].view(-1, *[1] * (grad.dim() - 1))
        return torch.where(w > 0, grad * w, torch.zeros((), dtype=grad.dtype, device=grad.device))

    key = ("ig", where.path, tuple(x.shape[1:]), per_row, x.dtype)
    summed = run_rows(run, P * n_nodes, lambda rows: rows // n_nodes, P, batch_size, like=x,
                      remember=(model.module, key))   # (P, n_out, T, d)
    f_x, f_b = ends[..., 0], ends[..., 1]                                   # (P, n_out)
    attr = (x.to(acc) - b.to(acc)).unsqueeze(1) * summed                                   # (P, n_out, T, d)
    _check_finite(attr, method, baseline)
    delta = attr.flatten(2).sum(-1) - (f_x - f_b).to(attr.dtype)           # (P, n_out)
    results = []
    for p in range(P):
        keep = (~prep.pad[p]).nonzero().flatten()
        tokens = list(prep.tokens[p])
        if where is not emb and attr.shape[2] > prep.n_prompt:
            # a layer's output at the continuation's positions moves with the prompt too: keep those
            # columns (the teacher-forced target tokens) so that the attributions add up to f(x) − f(b)
            keep = torch.cat([keep, torch.arange(prep.n_prompt, attr.shape[2], device=keep.device)])
            tokens += token_strings(model, prep.targets[p].ids[: attr.shape[2] - prep.n_prompt])
        values = attr[p][:, keep]                                            # (n_out, n_tok, d)
        target_text = prep.targets[p].describe()
        info = {"method": method, "n_steps": len(alphas), "baseline": baseline if isinstance(baseline, (str, int)) else "tensor",
                "layer": "embeddings" if layer is None else where.path,
                "f_x": float(f_x[p].sum()), "f_baseline": float(f_b[p].sum())}
        if per_token:
            results.append(Attribution(tokens=tokens, scores=values.sum(-1), values=values, delta=delta[p],
                                       target=target_text, method="integrated_gradients",
                                       output_tokens=token_strings(model, prep.targets[p].ids), info=info))
        else:
            results.append(Attribution(tokens=tokens, scores=values[0].sum(-1), values=values[0],
                                       delta=delta[p, 0], target=target_text, method="integrated_gradients",
                                       info=info))
    single = isinstance(inputs, str) or isinstance(inputs, torch.Tensor) and inputs.dim() == 1
    return results[0] if single else results


def _row_scores(tgt: Any, logits: torch.Tensor, ids: torch.Tensor, contrast_ids: torch.Tensor | None) -> torch.Tensor:
    """Each row's score for each of its own target tokens: (rows, target tokens); (rows, 1) for a metric."""
    if tgt.metric is not None:
        return tgt.scores(logits).view(-1, 1)
    n = ids.shape[1]
    last = logits[:, -n:].float() if tgt.score != "logit" else logits[:, -n:]
    if tgt.score == "logprob":
        last = torch.log_softmax(last, -1)
    elif tgt.score == "prob":
        last = torch.softmax(last, -1)
    per = last.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    if contrast_ids is not None:
        per = per - last.gather(-1, contrast_ids.unsqueeze(-1)).squeeze(-1)
    return per


def _point(x: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """b + α (x − b), computed in α's (accumulation) dtype and rounded once to the model's."""
    return (b.to(alpha.dtype) + alpha * (x.to(alpha.dtype) - b.to(alpha.dtype))).to(x.dtype)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """Steps are weighted and summed in at least float32: a 16-bit running sum loses the small terms."""
    return torch.promote_types(x.dtype, torch.float32)


def _check_finite(attr: torch.Tensor, method: str, baseline: Any) -> None:
    if torch.isfinite(attr).all():
        return
    hint = ""
    if method in ("riemann_left", "riemann_trapezoid"):
        hint = (f" method={method!r} evaluates the gradient at the baseline itself, where a zero baseline makes "
                "RMSNorm/LayerNorm gradients blow up")
    raise NonFiniteAttributionError(
        f"integrated gradients produced inf/NaN attributions (baseline={baseline!r}, method={method!r}).{hint}; "
        "use method='gausslegendre' (never evaluates the end points) or another baseline such as 'pad'."
    )


# -- generic modules ----------------------------------------------------------------------------
def _generic(model: Model, inputs: Any, target: Any, baseline: Any, alphas: list[float], weights: list[float],
             layer: Any, batch_size: int | None, method: str) -> Attribution:
    if not isinstance(inputs, torch.Tensor):
        raise MethodError(f"a generic attrib.Model takes a tensor of inputs, got {type(inputs).__name__}.")
    x_in = inputs
    if layer is None and not x_in.is_floating_point():
        raise MethodError(
            f"inputs are integers ({x_in.dtype}) and there is no embedding to attribute to; pass layer='...' "
            "(e.g. the embedding module's path) to attribute to a module's output."
        )
    with torch.no_grad(), model.trace(x_in):
        out = first_tensor(model.output).detach().save()
    score_fn = _generic_score(target, out)
    if layer is None:
        x = x_in.detach()
        if isinstance(baseline, str) and baseline == "zeros":
            b = torch.zeros_like(x)
        elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            b = torch.full_like(x, float(baseline))
        elif isinstance(baseline, torch.Tensor):
            try:
                b = baseline.to(x).expand_as(x)
            except RuntimeError:
                raise MethodError(f"baseline has shape {tuple(baseline.shape)}; expected the inputs' shape "
                                  f"{tuple(x.shape)} or one that broadcasts to it.") from None
        else:
            raise MethodError(f"baseline={baseline!r} is not 'zeros', a number or a tensor.")
        where = None
    else:
        where = envoy_for(model, layer)
        x = _values_at_generic(model, where, x_in)
        if isinstance(baseline, str) and baseline == "zeros":
            b_in = torch.zeros_like(x_in)
        elif isinstance(baseline, torch.Tensor):
            b_in = baseline.to(x_in).expand_as(x_in)
        else:
            b_in = torch.full_like(x_in, baseline)
        b = _values_at_generic(model, where, b_in)
    with torch.no_grad():
        f_x = score_fn(_call(model, where, x_in, x)).detach()
        f_b = score_fn(_call(model, where, x_in, b)).detach()
    B, acc = x.shape[0], _accumulation_dtype(x)
    shape = (-1, *[1] * (x.dim() - 1))

    def run(rows: torch.Tensor) -> torch.Tensor:
        item, step = rows // len(alphas), rows % len(alphas)
        alpha = torch.tensor(alphas, dtype=acc, device=x.device)[step].view(shape)
        value = _point(x[item], b[item], alpha)
        row_score = lambda output: score_fn(output, rows=item)  # noqa: E731
        if where is None:
            grad = _input_gradient(model, value, row_score)
        else:
            _, grad = gradient_at(model, where, value, row_score, (x_in[item],), {})
        grad = grad.to(acc)
        return grad * torch.tensor(weights, dtype=grad.dtype, device=grad.device)[step].view(shape)

    key = ("ig", None if where is None else where.path, tuple(x.shape[1:]), x.dtype)
    summed = run_rows(run, B * len(alphas), lambda rows: rows // len(alphas), B, batch_size, like=x,
                      remember=(model.module, key))
    attr = (x.to(acc) - b.to(acc)) * summed
    _check_finite(attr, method, baseline)
    delta = attr.flatten(1).sum(-1) - (f_x - f_b)
    return Attribution(tokens=[str(i) for i in range(x.shape[-1])], scores=attr, values=attr, delta=delta,
                       target=str(target), method="integrated_gradients",
                       info={"method": method, "n_steps": len(alphas), "f_x": f_x.tolist(), "f_baseline": f_b.tolist()})


def _generic_score(target: Any, out: torch.Tensor) -> Callable[..., torch.Tensor]:
    if callable(target):
        return lambda output, rows=None: target(output)
    if target is None:
        classes = out.reshape(out.shape[0], -1).argmax(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        if out.dim() < 2 or not 0 <= target < out.shape[-1]:
            raise MethodError(f"target={target} is not an output index of the model (output shape {tuple(out.shape)}).")
        classes = torch.full((out.shape[0],), target, device=out.device)
    else:
        raise MethodError(f"target must be a class index, a callable or None for a generic model, got {target!r}.")

    def score(output: Any, rows: torch.Tensor | None = None) -> torch.Tensor:
        o = first_tensor(output).reshape(first_tensor(output).shape[0], -1)
        c = classes if rows is None else classes[rows]
        return o.gather(1, c.view(-1, 1)).squeeze(1)
    return score


def _values_at_generic(model: Model, envoy: Envoy, x_in: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), model.trace(x_in):
        value = first_tensor(envoy.output).detach().save()
    return value


def _call(model: Model, where: Envoy | None, x_in: torch.Tensor, value: torch.Tensor) -> Any:
    if where is None:
        return model.module(value)
    with model.trace(x_in):
        where.output = replace_first(where.output, value)
        out = model.output.save()
    return out


def _input_gradient(model: Model, value: torch.Tensor, score_fn: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    leaf = value.detach().requires_grad_(True)
    with torch.enable_grad(), model.trace(leaf):
        model.inputs
        scores = score_fn(model.output)
        with scores.sum().backward():
            grad = leaf.grad.save()
    return grad
