"""Exact edge patching and circuit faithfulness: forwards in which chosen receivers read another run's sender values.

>>> import torch, transformers, attrib
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
>>> model = attrib.LanguageModel(transformers.GPT2LMHeadModel(config).double().eval())
>>> clean, corrupted = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 5, 3, 4]])
>>> exact = attrib.edge_patching(model, clean, corrupted, edges=[("L0H1", "L1H2.q"), ("M1", "logits")], target=7)
>>> exact.n_edges, exact.method
(2, 'edge_patching')
>>> g = attrib.edge_attribution_patching(model, clean, corrupted, target=7)
>>> f = attrib.circuit_faithfulness(model, g, clean, corrupted, sizes=[0, 10, g.n_edges], target=7)
>>> round(abs(f.recovered[0].item()), 9), round(f.recovered[-1].item(), 9)   # no edge: corrupted; all: clean
(0.0, 1.0)

The edge s → r is patched by giving receiver r (one head's query, key or value; an MLP; the logits) the
residual stream it reads plus (s's value on the source run − s's value in this run), through its own norm and
its own slice of the projection: every other receiver reads the stream as it is. Many edges can be patched in
one forward, and each row of a batched forward patches its own set.

- :func:`edge_patching` (denoise): the corrupted run with one edge restored to its clean sender value, one row
  per edge: metric(patched) − metric(corrupted), the quantity that edge attribution patching estimates.
- :func:`circuit_faithfulness` (Hanna et al. 2024's evaluation): the clean run with every edge *outside* the
  circuit fed its corrupted sender value, for circuits of the ``sizes`` top edges of a graph; the metric
  recovered, (m(circuit) − m(corrupted)) / (m(clean) − m(corrupted)), averaged over pairs as the metric is.
  The full graph recovers 1 and the empty circuit 0 (the tests check both).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError
from ..models.sites import Site, head_outputs
from ..results import Faithfulness, Graph
from .circuits import _Nodes, setup as _setup
from .inputs import Inputs, check_batch_size
from .pairs import Pairs
from .planning import each_chunk

__all__ = ["edge_patching", "circuit_faithfulness"]


class _Plan:
    """What one batched forward patches: row b is pair ``items[b]`` whose edges ``mask[b]`` (senders × receivers)
    read the sender values of ``source`` (senders, pairs, positions, hidden) instead of this run's. The senders'
    differences (source − this run) are kept as the forward produces them, in model order."""

    def __init__(self, items: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> None:
        self.items, self.mask, self.source = items, mask, source
        self.diff: torch.Tensor | None = None
        self.n = 0

    def add(self, value: torch.Tensor) -> None:
        """The next sender's value in this run, (rows, positions, hidden)."""
        if self.diff is None:
            self.diff = torch.zeros((self.source.shape[0], len(self.items), *value.shape[1:]), dtype=self.source.dtype,
                                    device=value.device)
        self.diff[self.n] = self.source[self.n][self.items.to(self.source.device)].to(value.device) - value
        self.n += 1

    def correction(self, receiver: int) -> torch.Tensor | None:
        """(rows, positions, hidden) to add to what ``receiver`` reads, or None when no row patches it."""
        m = self.mask[:, :self.n, receiver]                                       # (rows, senders so far)
        if self.diff is None or not bool(m.any()):
            return None
        return torch.einsum("bs,sbtd->btd", m.to(self.diff.dtype).to(self.diff.device), self.diff[:self.n])


def _values(pairs: Pairs, nodes: _Nodes, model: Model, inputs: Inputs, acc: torch.dtype,
            batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sender's value on ``inputs`` (senders, pairs, positions, hidden) and the metric per pair, from no-grad
    forwards of ``batch_size`` pairs (``None``: planned, halved on out-of-memory)."""
    out: list[torch.Tensor] = []
    metric = torch.empty(pairs.n_pairs, dtype=torch.float64)

    def run(rows: torch.Tensor) -> None:
        rows = rows.cpu()
        values, metric[rows] = _sender_values(nodes, model, inputs, rows, acc)
        if not out:
            out.append(values.new_empty((values.shape[0], pairs.n_pairs, *values.shape[2:])))
        out[0][:, rows.to(values.device)] = values

    key = ("edge-values", tuple(inputs.x.shape[1:]), len(nodes.senders), model.dtype, acc)
    each_chunk(pairs.n_pairs, batch_size, model.device, run, remember=(model.module, key))
    return out[0], metric


def _sender_values(nodes: _Nodes, model: Model, inputs: Inputs, rows: torch.Tensor,
                   acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sender's value on the rows ``rows`` of ``inputs`` (senders, rows, positions, hidden), their metric."""
    args, kwargs = inputs.call(rows)
    rows = rows.to(inputs.x.device)
    with torch.no_grad(), model.trace(*args, **kwargs):
        saved = [nodes.resid[0].read(model).save()]
        for l in nodes.layers:
            saved.append(nodes.z[l].read(model).save())
            saved.append(nodes.mlp[l].module_value(model).save())
        metric = inputs.scores(model.output, rows).sum(-1).save()
    shape, device = saved[0].shape, saved[0].device        # a dispatched model's layers may live elsewhere
    out = [saved[0].to(acc)[None]]
    for l in nodes.layers:
        out.append(head_outputs(model, nodes.z[l], saved[1 + 2 * l].to(acc)).permute(2, 0, 1, 3).to(device))
        out.append(saved[2 + 2 * l].reshape(shape).to(device=device, dtype=acc)[None])
    return torch.cat(out).detach(), metric.double().cpu()


def _patched_metric(pairs: Pairs, nodes: _Nodes, layout: Any, inputs: Inputs, plan: _Plan) -> torch.Tensor:
    """One forward of ``inputs`` rows ``plan.items`` with ``plan``'s edges patched; the metric per row."""
    model = pairs.model
    rows = plan.items.to(inputs.x.device)
    args, kwargs = inputs.call(rows)
    base = layout.layers
    norm = lambda l, path, kind: Site(f"{path}.{l}", f"{base}.{l}.{path}", kind, l) if path else None  # noqa: E731
    receivers = {name: i for i, name in enumerate(nodes.receivers)}
    with torch.no_grad(), model.trace(*args, **kwargs):
        for l in nodes.layers:
            resid = nodes.resid[l].read(model)
            if l == 0:
                plan.add(resid.to(plan.source.dtype))
            ln = model.module.get_submodule(f"{base}.{l}.{layout.ln_attn}") if layout.ln_attn else (lambda x: x)
            written: dict[int, torch.Tensor] = {}                  # module value id -> its new full value
            for k, where in zip("qkv", nodes.qkv[l]):
                full = written.get(id(where.module_value(model)), where.module_value(model))
                module = model.module.get_submodule(where.path)
                part = where.take(full).clone()
                for h in range(part.shape[2]):
                    name = f"L{l}H{h}.{k}" if f"L{l}H{h}.{k}" in receivers else f"L{l}KV{h}.{k}"
                    fix = plan.correction(receivers[name])
                    if fix is not None:
                        part[:, :, h] = where.take(module(ln(resid + fix.to(resid))))[:, :, h]
                new = where.put(full, part)
                written[id(where.module_value(model))] = new
                if k == "v" or where.path != nodes.qkv[l][("qkv".index(k) + 1) % 3].path:
                    where.write_module_value(model, new)           # a fused module is written once, after v
            z = nodes.z[l].read(model)
            for head in head_outputs(model, nodes.z[l], z.to(plan.source.dtype)).permute(2, 0, 1, 3):
                plan.add(head)
            fix = plan.correction(receivers[f"M{l}"])
            if fix is not None and layout.ln_mlp:        # the MLP reads ln_mlp(stream + fix)
                into, out = norm(l, layout.ln_mlp, "input"), norm(l, layout.ln_mlp, "output")
                x = into.read(model)
                module = model.module.get_submodule(into.path)
                out.write(model, module(x + fix.to(x).reshape(x.shape)))
            elif fix is not None:                         # no norm: the MLP reads the stream + fix
                into = Site(f"mlp_in.{l}", nodes.mlp[l].path, "input", l)
                x = into.read(model)
                into.write(model, x + fix.to(x).reshape(x.shape))
            mlp = nodes.mlp[l].module_value(model)
            plan.add(mlp.reshape(resid.shape).to(plan.source.dtype))
        fix = plan.correction(receivers["logits"])
        if fix is not None:
            last = nodes.last.read(model)
            nodes.last.write(model, last + fix.to(last))
        metric = inputs.scores(model.output, rows).sum(-1).save()
    return metric.double().cpu()


def _in_chunks(total: int, batch_size: int | None, run: Callable[[torch.Tensor], torch.Tensor], model: Model,
               key: tuple) -> tuple[torch.Tensor, int]:
    """``run(rows)`` (a float64 value per row) over ``arange(total)`` in passes of ``batch_size`` rows (``None``:
    planned under ``key``, halved on out-of-memory); every row's value and the number of passes."""
    out = torch.empty(total, dtype=torch.float64)

    def fill(rows: torch.Tensor) -> None:
        rows = rows.cpu()
        out[rows] = run(rows)

    _, passes = each_chunk(total, batch_size, model.device, fill, remember=(model.module, key))
    return out, passes


def _key(kind: str, pairs: Pairs, nodes: _Nodes, acc: torch.dtype) -> tuple:
    """What a patched row costs: the model (by module), its dtype, the rows' positions and hidden size, the nodes."""
    return (kind, tuple(pairs.clean.x.shape[1:]), len(nodes.senders), len(nodes.receivers), pairs.model.dtype, acc)


@releasing
def edge_patching(model: Model, clean: Any, corrupted: Any, *, edges: Sequence[tuple[str, str]], target: Any = None,
                  contrast: Any = None, metric: Callable[..., torch.Tensor] | None = None, score: str = "logit",
                  component_map: Mapping[str, Any] | None = None, batch_size: int | None = None) -> Graph:
    """The exact effect of restoring each edge alone: metric(corrupted run with the edge's receiver reading the
    clean sender value) − metric(corrupted run), averaged over pairs; a :class:`~attrib.Graph` holding only
    ``edges`` (``(sender, receiver)`` names as :func:`attrib.edge_attribution_patching` gives them).
    ``batch_size``: rows (edges × pairs) per patched forward (``None``: planned, halved on out-of-memory)."""
    batch_size = check_batch_size(batch_size)
    pairs, nodes, layout, acc = _setup(model, clean, corrupted, target, contrast, score, metric, component_map)
    chosen = _edge_indices(nodes, edges)
    source, m_clean = _values(pairs, nodes, model, pairs.clean, acc, batch_size)
    _, m_corrupted = _values(pairs, nodes, model, pairs.corrupted, acc, batch_size)
    n, p = len(chosen), pairs.n_pairs
    mask = torch.zeros(n * p, len(nodes.senders), len(nodes.receivers), dtype=torch.bool)
    for e, (s, r) in enumerate(chosen):
        mask[e * p:(e + 1) * p, s, r] = True
    items = torch.arange(p).repeat(n)

    def run(rows: torch.Tensor) -> torch.Tensor:
        return _patched_metric(pairs, nodes, layout, pairs.corrupted, _Plan(items[rows], mask[rows], source))

    metrics, passes = _in_chunks(n * p, batch_size, run, model, _key("edge_patching", pairs, nodes, acc))
    effect = (metrics - m_corrupted[items]).view(n, p).mean(1)
    scores = torch.zeros(len(nodes.senders), len(nodes.receivers), dtype=acc)
    keep = torch.zeros_like(nodes.edges)
    for e, (s, r) in enumerate(chosen):
        scores[s, r], keep[s, r] = effect[e], True
    return Graph(nodes.senders, nodes.receivers, scores, keep, "edge_patching", pairs.target_text(),
                 float(m_clean.mean()), float(m_corrupted.mean()), {"pairs": p, "forwards": passes})


def _edge_indices(nodes: _Nodes, edges: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    if isinstance(edges, (str, bytes)) or not isinstance(edges, Sequence) or not edges:
        raise MethodError(f"edges must be a non-empty list of (sender, receiver) names, got {edges!r:.60}; e.g. "
                          "edges=[('L0H1', 'L1H2.q'), ('M3', 'logits')] or graph.top(10).")
    out = []
    for edge in edges:
        if not isinstance(edge, (tuple, list)) or len(edge) < 2:
            raise MethodError(f"each edge is a (sender, receiver) pair of names, got {edge!r:.60}.")
        s, r = edge[0], edge[1]
        if s not in nodes.senders or r not in nodes.receivers:
            sender = s not in nodes.senders
            raise MethodError(f"{s if sender else r!r} is not a {'sender' if sender else 'receiver'} of this model; "
                              "senders are 'embed', 'L{layer}H{head}', 'M{layer}'; receivers 'L{layer}H{head}.q', "
                              "'.k' and '.v' ('L{layer}KV{group}.k', '.v' under grouped-query attention), 'M{layer}', "
                              "'logits'.")
        i, j = nodes.senders.index(s), nodes.receivers.index(r)
        if not bool(nodes.edges[i, j]):
            raise MethodError(f"there is no edge from {s!r} to {r!r}: the receiver does not read that sender's output.")
        out.append((i, j))
    return out


@releasing
def circuit_faithfulness(model: Model, graph: Graph, clean: Any, corrupted: Any, *, sizes: Sequence[int],
                         target: Any = None, contrast: Any = None, metric: Callable[..., torch.Tensor] | None = None,
                         score: str = "logit", component_map: Mapping[str, Any] | None = None,
                         batch_size: int | None = None) -> Faithfulness:
    """For each size k: the clean run with every edge outside the k top-|score| edges of ``graph`` fed its
    corrupted sender value; the normalised metric recovered (see the module docstring). ``batch_size``: rows
    (sizes × pairs) per patched forward (``None``: planned, halved on out-of-memory)."""
    batch_size = check_batch_size(batch_size)
    if not isinstance(graph, Graph):
        raise MethodError(f"graph must be an attrib.Graph (from edge_attribution_patching), got {type(graph).__name__}.")
    sizes = [int(k) for k in sizes]
    if not sizes or any(k < 0 for k in sizes):
        raise MethodError(f"sizes must be a non-empty list of edge counts ≥ 0, got {sizes!r:.60}.")
    pairs, nodes, layout, acc = _setup(model, clean, corrupted, target, contrast, score, metric, component_map)
    if graph.senders != nodes.senders or graph.receivers != nodes.receivers:
        raise MethodError("the graph's senders and receivers are not this model's; score the graph on this model.")
    source, m_corrupted = _values(pairs, nodes, model, pairs.corrupted, acc, batch_size)
    _, m_clean = _values(pairs, nodes, model, pairs.clean, acc, batch_size)
    ranked = [(graph.senders.index(s), graph.receivers.index(r)) for s, r, _ in graph.top(graph.n_edges)] \
        if graph.n_edges else []
    p = pairs.n_pairs
    mask = nodes.edges.clone().repeat(len(sizes) * p, 1, 1)           # every edge corrupted …
    for i, k in enumerate(sizes):
        for s, r in ranked[:k]:                                        # … but the circuit's
            mask[i * p:(i + 1) * p, s, r] = False
    items = torch.arange(p).repeat(len(sizes))

    def run(rows: torch.Tensor) -> torch.Tensor:
        return _patched_metric(pairs, nodes, layout, pairs.clean, _Plan(items[rows], mask[rows], source))

    metrics = _in_chunks(len(sizes) * p, batch_size, run, model,
                         _key("circuit_faithfulness", pairs, nodes, acc))[0].view(len(sizes), p).mean(1)
    full, empty = float(m_clean.mean()), float(m_corrupted.mean())
    if full == empty:
        raise MethodError(f"the metric is {full:.6g} on both the clean and the corrupted prompts, so no share of a gap "
                          "can be recovered; pick prompts (or a metric) that the model tells apart.")
    recovered = (metrics - empty) / (full - empty)
    return Faithfulness(sizes, recovered, metrics, full, empty, graph.method, graph.n_edges,
                        {"pairs": p, "target": pairs.target_text()})
