"""Edge attribution patching: EAP (Syed, Rager & Conmy 2023) and EAP-IG (Hanna, Pezzelle & Belinkov, COLM 2024).

>>> import torch, transformers, attrib
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
>>> model = attrib.LanguageModel(transformers.GPT2LMHeadModel(config).double().eval())
>>> g = attrib.edge_attribution_patching(model, torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 5, 3, 4]]), target=7)
>>> len(g.senders), len(g.receivers), g.n_edges   # embed + 8 heads + 2 MLPs; 24 q/k/v + 2 MLPs + logits
(11, 27, 110)

A transformer's residual stream is a sum of what its senders wrote: the input embeddings, each head's output
(its slice of the attention output projection) and each MLP's output. Each receiver reads it: a head through
its query, key and value, an MLP through its input, the unembedding through the last layer's output. The edge
score of sender s → receiver r is Δ_s · g_r summed over positions, where Δ_s is the sender's output on the clean
prompt minus on the corrupted one and g_r the gradient of the metric with respect to the residual stream *as r
reads it*, at the corrupted run: the vector-Jacobian product of r's own path (its layer norm, its slice of the
projection) applied to the metric's gradient at r. So the edges of a sender sum to its node attribution patching
(Σ_r g_r is the metric's gradient at the residual stream where the sender wrote), which the tests check.

- ``method="eap"``: g_r at the corrupted run (the linear estimate of restoring that edge alone).
- ``method="eap-ig"``: g_r averaged over ``n_steps`` points (default 5, Gauss–Legendre unless ``rule`` says)
  on the straight line between the clean and the corrupted input embeddings, α = 0 clean, α = 1 corrupted, as
  integrated gradients averages; ``rule="riemann_right", n_steps=1`` is EAP. Hanna et al.'s Riemann points,
  k/m from the corrupted end (k = 1 … m, the clean end included), are ``rule="riemann_left"`` here.
- Pairs as in the patchings (:mod:`attrib.methods.pairs`): one pair, or lists of pairs in one batch, whose
  scores are averaged. ``metric``, ``target``, ``contrast``, ``score`` as everywhere.

Layouts with a plain pre-norm residual stream are supported (GPT-2, GPT-NeoX with its parallel attention and
MLP, Llama, Mistral, Mixtral, Qwen2/3, Gemma, Phi-3, OPT). Gemma 2/3 (norms after each sublayer), BERT-style
post-norm encoders and T5 are refused: there the residual stream is not the plain sum of the senders' outputs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError
from ..models.sites import Site, head_outputs, in_out, layout_for, site
from ..results import Graph
from .inputs import check_batch_size, check_grad_mode
from .pairs import Pairs, prepare_pairs
from .planning import each_chunk
from .quadrature import quadrature

__all__ = ["edge_attribution_patching", "METHODS"]

METHODS = ("eap", "eap-ig")
_UNSUPPORTED = {"gemma2": "norms after each sublayer", "gemma3": "norms after each sublayer",
                "gemma3_text": "norms after each sublayer", "bert": "a post-norm residual stream",
                "roberta": "a post-norm residual stream", "t5": "an encoder-decoder"}


def _check_family(model: Model, component_map: Mapping[str, Any] | None) -> bool:
    """Whether the model's MLPs read the layer's input (parallel attention and MLP, GPT-NeoX style); refuse the
    families whose residual stream is not a plain sum of the senders' outputs."""
    config = getattr(model.module, "config", None)
    family = getattr(config, "model_type", None)
    if component_map is None and family in _UNSUPPORTED:
        raise MethodError(f"edge attribution patching needs a residual stream that is the plain sum of what the "
                          f"embeddings, heads and MLPs wrote; {family} has {_UNSUPPORTED[family]}, so its edges are not "
                          "defined that way. Use attribution_patching for node scores instead.")
    if component_map is None and getattr(config, "do_layer_norm_before", True) is False:
        raise MethodError(f"edge attribution patching needs a residual stream that is the plain sum of what the "
                          f"embeddings, heads and MLPs wrote; this {family} normalises after each sublayer "
                          "(do_layer_norm_before=False), so its edges are not defined that way. Use "
                          "attribution_patching for node scores instead.")
    return bool(getattr(config, "use_parallel_residual", False))


class _Nodes:
    """Sender and receiver names, their positions in the model (for which edges exist), and the sites read."""

    def __init__(self, model: Model, n_layers: int, n_heads: int, n_kv: int, parallel: bool,
                 component_map: Mapping[str, Any] | None) -> None:
        at = lambda kind, layer: site(model, f"{kind}.{layer}", component_map)          # noqa: E731
        self.layers = range(n_layers)
        self.resid = [at("resid_pre", l) for l in self.layers]
        self.z = [at("z", l) for l in self.layers]
        self.mlp = [at("mlp_out", l) for l in self.layers]
        self.qkv = [[at(k, l) for k in "qkv"] for l in self.layers]
        self.last = at("resid_post", n_layers - 1)
        layout = layout_for(model, component_map)
        # what the q/k/v projections read: the attention's norm output (the stream itself without a norm)
        self.ln = [Site(f"ln_attn.{l}", f"{layout.layers}.{l}.{layout.ln_attn}", "output", l) if layout.ln_attn
                   else self.resid[l] for l in self.layers]
        # what each MLP reads the stream through: its norm's input (the MLP's own input without a norm)
        self.mlp_in = [Site(f"ln_mlp_in.{l}", f"{layout.layers}.{l}.{layout.ln_mlp}", "input", l) if layout.ln_mlp
                       else Site(f"mlp_in.{l}", self.mlp[l].path, "input", l) for l in self.layers]
        self.n_heads, self.n_kv, self.parallel = n_heads, n_kv, parallel
        # where each node writes or reads: embed −1, attention of layer l at 2l, its MLP at 2l + 1 (2l if parallel)
        mlp_at = (lambda l: 2 * l) if parallel else (lambda l: 2 * l + 1)
        self.senders = ["embed"] + [name for l in self.layers for name in
                                    [f"L{l}H{h}" for h in range(n_heads)] + [f"M{l}"]]
        send_at = [-1] + [p for l in self.layers for p in [2 * l] * n_heads + [mlp_at(l)]]
        # receivers: each head's query; each key/value head's key and value (one per head without grouped-query
        # attention, ``L{l}KV{g}`` with it); each MLP; the logits
        kv = (lambda l, g: f"L{l}H{g}") if n_kv == n_heads else (lambda l, g: f"L{l}KV{g}")
        self.receivers = [name for l in self.layers for name in
                          [f"L{l}H{h}.q" for h in range(n_heads)] + [f"{kv(l, g)}.{k}" for k in "kv"
                                                                      for g in range(n_kv)] + [f"M{l}"]] + ["logits"]
        read_at = [p for l in self.layers for p in [2 * l] * (n_heads + 2 * n_kv) + [mlp_at(l)]] + [2 * n_layers]
        self.edges = torch.tensor(send_at)[:, None] < torch.tensor(read_at)[None, :]
        if parallel:                 # an MLP reading the layer input reads what the attention of its layer did not
            self.edges &= ~((torch.tensor(send_at)[:, None] == torch.tensor(read_at)[None, :]))

    def sender_reads(self) -> list[Site]:
        """The sites that give the senders' values, in model order."""
        return [self.resid[0], *[s for l in self.layers for s in (self.z[l], self.mlp[l])]]

    def reads(self) -> list[Site]:
        unique = {s: None for l in self.layers for s in (self.resid[l], self.ln[l], *self.qkv[l], self.z[l],
                                                          self.mlp_in[l], self.mlp[l])}
        return [*unique, self.last]


def _senders(nodes: _Nodes, model: Model, clean: dict[Site, torch.Tensor], corrupted: dict[Site, torch.Tensor],
             acc: torch.dtype) -> torch.Tensor:
    """(senders, rows, positions, hidden): each sender's output on clean minus on corrupted."""
    rows = [(clean[nodes.resid[0]] - corrupted[nodes.resid[0]]).to(acc)[None]]
    device = rows[0].device                                 # a dispatched model's later layers may live elsewhere
    for l in nodes.layers:
        dz = nodes.z[l].take(clean[nodes.z[l]]) - nodes.z[l].take(corrupted[nodes.z[l]])
        per_head = head_outputs(model, nodes.z[l], dz.to(acc))                  # (rows, positions, heads, hidden)
        rows.append(per_head.permute(2, 0, 1, 3).to(device))
        mlp = nodes.mlp[l]                                  # (rows · positions, hidden) for OPT: unflatten
        diff = (clean[mlp] - corrupted[mlp]).reshape(*rows[0].shape[1:3], -1)
        rows.append(diff.to(device=device, dtype=acc)[None])
    return torch.cat(rows)


def _receivers(nodes: _Nodes, model: Model, values: dict[Any, torch.Tensor], metric: torch.Tensor,
               reduce: Callable[[torch.Tensor], torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """(receivers, rows, positions, hidden): the metric's gradient at the residual stream as each receiver reads
    it, from the run's graph, each passed through ``reduce`` (weighted, on one device), in the order of
    ``nodes.receivers``.

    A head's query (key, value) reads the stream through the norm and its slice of the projection: the
    gradient at its slice, times that slice of the weight, gives the gradient at the norm's output (all heads in
    one product), and one batched vector-Jacobian product of the norm gives the stream's."""
    modules = list(dict.fromkeys(id(values[w]) for l in nodes.layers for w in nodes.qkv[l]))
    by_id = {id(values[w]): values[w] for l in nodes.layers for w in nodes.qkv[l]}
    wanted = [by_id[i] for i in modules] + [values[nodes.mlp_in[l]] for l in nodes.layers] + [values[nodes.last]]
    grads = torch.autograd.grad(metric.sum(), wanted, retain_graph=True, allow_unused=True)
    grad_of = dict(zip(modules, grads))
    out: list[torch.Tensor] = []
    for l in nodes.layers:
        heads = []
        for where in nodes.qkv[l]:
            full = values[where]
            g = grad_of[id(full)]
            g = where.take(torch.zeros_like(full) if g is None else g)           # (rows, positions, heads, d_head)
            weight = where.take(in_out(model.module.get_submodule(where.path)))  # (in, heads, d_head)
            heads.append(torch.einsum("bthk,ihk->hbti", g, weight.to(g.dtype)))  # at the norm's output
        at_norm = torch.cat(heads)                                           # (receivers of the layer, rows, T, d)
        if nodes.ln[l] is nodes.resid[l]:
            stream = at_norm
        else:
            stream = torch.autograd.grad(values[nodes.ln[l]], values[nodes.resid[l]], at_norm, retain_graph=True,
                                         is_grads_batched=True)[0]
        out.extend(reduce(v.to(acc)) for v in stream)
        g_mlp = grads[len(modules) + l]
        out.append(reduce(g_mlp.reshape(values[nodes.resid[l]].shape).to(acc)))
    out.append(reduce(grads[-1].to(acc)))
    return torch.stack(out)


def setup(model: Model, clean: Any, corrupted: Any, target: Any, contrast: Any, score: str, metric: Any,
          component_map: Mapping[str, Any] | None, positions: Any = None) -> tuple[Pairs, _Nodes, Any, torch.dtype]:
    """The pairs, the nodes, the layout and the accumulation dtype of every edge method."""
    parallel = _check_family(model, component_map)
    pairs = prepare_pairs(model, clean, corrupted, target=target, contrast=contrast, score=score, metric=metric,
                          components=("heads",), component_map=component_map, positions=positions)
    layout = layout_for(model, component_map)
    nodes = _Nodes(model, pairs.n_layers, pairs.n_heads, layout.n_kv_heads or pairs.n_heads, parallel, component_map)
    return pairs, nodes, layout, torch.float64 if model.dtype == torch.float64 else torch.float32


@releasing
def edge_attribution_patching(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                              metric: Callable[..., torch.Tensor] | None = None, score: str = "logit",
                              method: str = "eap", n_steps: int | None = None, rule: str | None = None,
                              component_map: Mapping[str, Any] | None = None,
                              batch_size: int | None = None, per_position: bool = False,
                              positions: int | Sequence[int] | None = None) -> Graph:
    """Edge scores from every sender to every receiver (see the module docstring); a :class:`~attrib.Graph`.
    ``per_position=True`` also keeps each edge's score per position of the longest prompt (prompts aligned at
    their last token, as in the patchings; a position a shorter pair lacks counts 0 for it), which sums to the
    edge's score except for a multi-token target, whose teacher-forced positions count in the score (as exact
    edge patching patches them) but have no column; ``positions`` (ints, negative from the end) keeps only the
    senders' values at those prompt positions; ``batch_size``: rows (points × pairs) per gradient pass, and pairs
    per forward of the clean (corrupted) values (``None``: planned from measured passes, halved on out-of-memory:
    :mod:`attrib.methods.planning`; the scores are the same up to float rounding)."""
    check_grad_mode("edge_attribution_patching", model)
    batch_size = check_batch_size(batch_size)
    if method not in METHODS:
        raise MethodError(f"method={method!r:.40} is not one of {', '.join(map(repr, METHODS))}.")
    if method == "eap" and (n_steps is not None or rule is not None):
        raise MethodError("n_steps= and rule= choose the points of method='eap-ig'; method='eap' takes the gradient "
                          "at the corrupted run only. Pass method='eap-ig' with them, or drop them.")
    alphas, weights = quadrature(rule or ("riemann_right" if method == "eap" else "gausslegendre"),
                                 1 if method == "eap" else (5 if n_steps is None else n_steps), "rule")
    pairs, nodes, _, acc = setup(model, clean, corrupted, target, contrast, score, metric, component_map, positions)
    n = pairs.n_pairs
    clean_values, m_clean = _gather(pairs, nodes, pairs.clean, batch_size)
    eap = len(alphas) == 1 and alphas[0] == 1.0        # the gradient at the corrupted run: its values come with it
    corrupted_values, m_corrupted = (None, None) if eap else _gather(pairs, nodes, pairs.corrupted, batch_size)
    first_clean = clean_values[nodes.resid[0]]
    device = first_clean.device                        # where the gradients are summed (a dispatched model's first)
    # row i of the gradient passes is point i // n of pair i % n, ``batch_size`` rows a pass (None: planned)
    point_alpha, point_weight = torch.tensor(alphas, dtype=acc), torch.tensor(weights, dtype=acc)
    grads = torch.zeros((len(nodes.receivers), *first_clean.shape), dtype=acc, device=device)   # (R, pairs, T, d)
    done: list[tuple[dict[Any, torch.Tensor], torch.Tensor]] = []   # EAP: the corrupted run's values, pass by pass

    def run(rows: torch.Tensor) -> None:
        rows = rows.cpu()
        items, point = rows % n, rows // n
        start = None
        if not eap:                        # the first layer's input on the line, α = 1: the corrupted run
            f, c = first_clean[items].to(acc), corrupted_values[nodes.resid[0]][items].to(acc)
            alpha = point_alpha[point].to(device).view(-1, *[1] * (f.dim() - 1))
            start = (f + alpha * (c - f)).to(first_clean.dtype)
        values, m_rows = _run(pairs, nodes, pairs.corrupted, items, start, grad=True)
        weight_of = point_weight[point].to(device)

        def reduce(v: torch.Tensor) -> torch.Tensor:        # weighted, on the first layer's device
            v = v.detach().to(device)
            return v * weight_of.to(v.dtype).view(-1, *[1] * (v.dim() - 1))

        with torch.enable_grad():          # the caller may be under torch.no_grad(): the sum joins the graph
            part = _receivers(nodes, model, values, values.pop("metric"), reduce, acc)    # (R, rows, T, d)
        grads.index_add_(1, items.to(device), part)
        if eap:                            # passes cover the pairs in order: their values make the corrupted run's
            done.append(({k: values[k].detach() for k in nodes.sender_reads()}, m_rows))

    # what a row costs: the model (by module), its dtype, the rows' positions (prompt and target) and hidden size,
    # the nodes (a component_map may name others)
    key = ("eap", eap, tuple(pairs.clean.x.shape[1:]), len(nodes.senders), len(nodes.receivers), model.dtype, acc)
    size, passes = each_chunk(len(alphas) * n, batch_size, model.device, run, remember=(model.module, key))
    if eap:
        corrupted_values, m_corrupted = _joined(done)
    with torch.no_grad():
        deltas = _senders(nodes, model, clean_values, corrupted_values, acc)           # (S, pairs, T, d)
        if positions is not None:          # the senders' values at the positions asked for only
            chosen = torch.zeros(deltas.shape[1:3], dtype=torch.bool)
            for p, j in pairs.present.nonzero().tolist():
                chosen[p, pairs.index[p, j]] = True
            deltas = deltas * chosen.to(deltas.device)[None, :, :, None]
        if per_position:
            by_position = torch.einsum("sbtd,rbtd->srt", deltas, grads) / n
            by_position = by_position.masked_fill(~nodes.edges.to(by_position.device)[..., None], 0.0)
            total = by_position.sum(-1)
        else:
            total = torch.einsum("sbtd,rbtd->sr", deltas, grads) / n
    scores = total.masked_fill(~nodes.edges.to(total.device), 0.0).cpu()
    kept = None
    if per_position:                      # the positions asked for, of the longest prompt (never the continuation)
        kept = by_position[..., pairs.clean.n_prompt - pairs.length + torch.tensor(pairs.positions)].cpu()
    info = {"n_steps": len(alphas), "rule": rule or ("riemann_right" if method == "eap" else "gausslegendre"),
            "pairs": n, "parallel_residual": nodes.parallel, "rows_per_pass": size, "passes": passes}
    longest = next(i for i, labels in enumerate(pairs.clean.labels) if len(labels) == pairs.length)
    return Graph(nodes.senders, nodes.receivers, scores, nodes.edges.clone(), method,
                 pairs.target_text(), float(m_clean.mean()), float(m_corrupted.mean()), info, kept,
                 [pairs.clean.labels[longest][p] for p in pairs.positions] if per_position else None)


def _joined(parts: list[tuple[dict[Any, torch.Tensor], torch.Tensor]]) -> tuple[dict[Any, torch.Tensor], torch.Tensor]:
    """The values and metrics of passes over consecutive rows, as those of one pass (concatenated along the first
    dimension, which also joins an OPT MLP's (rows · positions, hidden) values in order)."""
    if len(parts) == 1:
        return parts[0]
    return {k: torch.cat([values[k] for values, _ in parts]) for k in parts[0][0]}, torch.cat([m for _, m in parts])


def _gather(pairs: Pairs, nodes: _Nodes, inputs: Any, batch_size: int | None) -> tuple[dict[Any, torch.Tensor],
                                                                                        torch.Tensor]:
    """The senders' module values and the metric of every pair of ``inputs``, from no-grad forwards of
    ``batch_size`` pairs (``None``: planned, halved on out-of-memory)."""
    model, parts = pairs.model, []
    each_chunk(pairs.n_pairs, batch_size, model.device,
               lambda rows: parts.append(_run(pairs, nodes, inputs, rows.cpu(), None, grad=False)),
               remember=(model.module, ("eap-values", tuple(inputs.x.shape[1:]), len(nodes.senders), model.dtype)))
    return _joined(parts)


def _run(pairs: Pairs, nodes: _Nodes, inputs: Any, items: torch.Tensor, start: torch.Tensor | None,
         grad: bool) -> tuple[dict[Any, torch.Tensor], torch.Tensor]:
    """One forward of ``items``: every site's module value (kept in the graph when ``grad``), the metric, and
    the first layer's input replaced by ``start`` when given."""
    model = pairs.model
    rows = items.to(inputs.x.device)
    args, kwargs = inputs.call(rows)
    values: dict[Any, torch.Tensor] = {}
    wanted = nodes.reads() if grad else nodes.sender_reads()
    with torch.enable_grad() if grad else torch.no_grad(), model.trace(*args, **kwargs):
        for where in wanted:
            if where is nodes.resid[0] and grad:
                first = (start if start is not None else where.read(model)).detach().requires_grad_(True)
                where.write(model, first)
            elif grad and where in nodes.mlp_in:       # a node of its own: its gradient is the MLP path's alone
                where.write(model, where.read(model).clone())
            values[where] = where.module_value(model).save()
        metric = inputs.scores(model.output, rows).sum(-1).save()
    if grad:
        values["metric"] = metric
    return values, metric.detach().double().cpu()
