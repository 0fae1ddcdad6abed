"""Attribution patching (a gradient approximation) and activation patching (exact) of model components.

>>> import torch, transformers, attrib
>>> from attrib.methods.patching import attribution_patching, activation_patching
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
>>> hf = transformers.GPT2LMHeadModel(config)
>>> model = attrib.LanguageModel(hf.double().eval())
>>> clean, corrupted = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 5, 3, 4]])
>>> approx = attribution_patching(model, clean, corrupted, target=7, contrast=8)
>>> exact = activation_patching(model, clean, corrupted, target=7, contrast=8)
>>> tuple(approx.scores["resid"].shape), tuple(exact.scores["heads"].shape)   # (L, positions), (L, heads, positions)
((2, 4), (2, 4, 4))
>>> full = exact.metric_clean - exact.metric_corrupted   # the last layer at the last position carries it all
>>> abs(exact.scores["resid"][-1, -1].item() - full) < 1e-9
True
>>> approx.top(1)[0][:2]                    # (component, (layer, position)) of the largest estimate
('resid', (1, 3))

- **Activation patching** (Meng et al. 2022, "causal tracing"; Wang et al. 2022): run the *receiving*
  prompt (the corrupted one for ``direction="denoise"``, the clean one for ``"noise"``) with one
  activation replaced by its value on the other prompt; the score is metric(patched) − metric(receiving).
  Every component × layer × position (× head) is one row of a batched forward, in chunks of ``batch_size``.
- **Attribution patching** (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale";
  AtP, Kramár et al. 2024, "AtP*"): its first-order Taylor approximation from one forward on each prompt and
  one backward: ``denoise``: (a_clean − a_corrupted) · ∂metric/∂a at the corrupted run (the TransformerLens
  demo); ``noise``: (a_corrupted − a_clean) · ∂metric/∂a at the clean run. The dot product is over the
  hidden dimension (the head dimension for heads), one number per layer × position (× head).

The metric is the target's score (``target``, ``contrast``, ``score`` as in every method; ``target=None``
is the clean prompt's top next token) or ``metric(logits) -> (batch,)``; a metric with a second parameter
without default, ``metric(logits, pairs)``, also gets each row's pair index (e.g. to read that pair's
answer tokens). Clean and corrupted must tokenize to the same number of tokens, so that positions
correspond; otherwise a :class:`~attrib.MethodError` says so.

**Batches of pairs** (the IOI tutorials' form): lists of clean and corrupted prompts are pairs run together,
clean[i] with corrupted[i] (:mod:`attrib.methods.pairs`: pairs of different lengths are left-padded and
aligned at their last token). ``scores`` is then the mean over pairs (the patching of the mean metric, as the
tutorials report it), ``per_pair`` each pair's scores and ``pair(i)`` pair i's result alone.

>>> batch = attribution_patching(model, [[1, 2, 3, 4], [1, 6, 3, 4]], [[1, 5, 3, 4], [1, 5, 3, 4]], target=7)
>>> tuple(batch.per_pair["resid"].shape), batch.pair(0).scores["resid"].shape == batch.scores["resid"].shape
((2, 2, 4), True)

Components are sites (:mod:`attrib.models.sites`) of every layer: ``resid`` = ``resid_post``, ``attn`` =
``attn_out``, ``mlp`` = ``mlp_out``, ``heads`` = ``z`` (each head's output, the input of the attention's
output projection), found through the model's layout (:mod:`attrib.models.layouts`) or ``component_map``;
``q``, ``k`` and ``v`` (each head's query, key and value projection, before any rotary embedding; key /
value heads under grouped-query attention) when named, as TransformerLens' demo patches them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.model import Model
from ..core.release import releasing
from ..errors import MethodError
from ..models.sites import Site, site
from ..results import PatchingResult
from .inputs import Inputs, check_batch_size, check_grad_mode
from .batching import plan_key
from .planning import Remember, each_chunk
from .compiled import options_of
from .compiled_patching import check_patching_supported, patch_passes
from . import atp_star as star
from .prefix import Prefix, can_reuse, fill_cache, read_prefix
from .pairs import COMPONENTS, DIRECTIONS, HEADED, Key, Pairs, ordered, prepare_pairs

__all__ = ["attribution_patching", "activation_patching", "COMPONENTS", "DIRECTIONS"]


def _collect(pairs: Pairs, inputs: Inputs, keys: Sequence[Key], items: torch.Tensor,
             sites: Mapping[Key, Site] | None = None, **extra: Any) -> tuple[dict[Key, torch.Tensor], torch.Tensor]:
    """One no-grad forward of the rows ``items`` (with ``extra`` keyword arguments): the values at ``keys`` (of
    ``sites``, by default the components') and the metric (rows,)."""
    model = pairs.model
    sites = pairs.sites if sites is None else sites
    args, kwargs = inputs.call(items.to(inputs.x.device))
    kwargs.update(extra)
    with torch.no_grad(), model.trace(*args, **kwargs):
        values = {key: sites[key].read(model).save() for key in ordered(sites, keys)}
        metric = inputs.scores(model.output, items.to(inputs.x.device)).sum(-1).save()
    return values, metric.double().cpu()


def _by_position(where: Site, value: torch.Tensor, width: int) -> torch.Tensor:
    """``value`` if it is (rows, ``width`` positions, ...), else a clear error (a module that flattens positions)."""
    if value.dim() < 3 or value.shape[1] != width:
        raise MethodError(f"{where.name} ({where.path}) has a value of shape {tuple(value.shape)}, not (rows, "
                          f"{width} positions, ...): its module flattens the positions; pass "
                          "'flat_mlp': True in component_map, or give another module.")
    return value


def _dot(diff: torch.Tensor, grad: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """(rows, positions) or (rows, heads, positions): Σ over the hidden (head) dimension of diff · grad."""
    prod = (diff.to(acc) * grad.to(acc)).sum(-1)
    return prod.transpose(1, 2) if prod.dim() == 3 else prod


def _remember(pairs: Pairs, kind: tuple) -> Remember:
    """The planner's key of ``kind`` of work on these pairs."""
    return plan_key(pairs.model, (*kind, pairs.components, pairs.model.dtype), pairs.clean.x)


def _chunks(total: int, batch_size: int | None, pairs: Pairs, kind: tuple,
            run: Callable[[torch.Tensor], None]) -> tuple[int, int]:
    """``run`` over CPU ``arange(total)`` in chunks of ``batch_size`` (``None``: planned, halved on
    out-of-memory; a size the caller chose is kept); (the last chunk size, the number of chunks run)."""
    return each_chunk(total, batch_size, pairs.model.device, lambda rows: run(rows.cpu()),
                      remember=_remember(pairs, kind))


def _nan_scores(pairs: Pairs) -> dict[str, torch.Tensor]:
    return {c: torch.full((pairs.n_pairs, *pairs.shape(c)), math.nan, dtype=torch.float64) for c in pairs.components}


def _score_dtype(model: Model) -> torch.dtype:
    return torch.float64 if model.dtype == torch.float64 else torch.float32


# -- attribution patching ------------------------------------------------------------------------

@releasing
def attribution_patching(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                         metric: Callable[..., torch.Tensor] | None = None, score: str = "logit",
                         components: Sequence[str] | str = COMPONENTS, direction: str = "denoise",
                         component_map: Mapping[str, Any] | None = None,
                         positions: int | Sequence[int] | None = None,
                         batch_size: int | None = None, qk_fix: bool = False,
                         grad_drop: bool = False) -> PatchingResult:
    """Attribution patching (Nanda 2023; AtP, Kramár et al. 2024): estimate every patch from one forward on
    each prompt and one backward.

    >>> import torch, transformers, attrib
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
    >>> hf = transformers.GPT2LMHeadModel(config)
    >>> r = attribution_patching(attrib.LanguageModel(hf.eval()), torch.tensor([[1, 2, 3]]),
    ...                          torch.tensor([[1, 4, 3]]), target=7, components=("resid", "heads"))
    >>> tuple(r.scores["resid"].shape), tuple(r.scores["heads"].shape)    # (L, positions), (L, heads, positions)
    ((2, 3), (2, 4, 3))

    ``clean`` and ``corrupted`` are one prompt each (text, token ids, a BatchEncoding) of the same number of
    tokens, or lists of prompts: pairs clean[i]/corrupted[i], run as one batch, with a target (and contrast)
    for all or one per pair; the result's ``scores`` are then the mean over pairs and ``per_pair`` holds each
    pair's (:mod:`attrib.methods.pairs`). ``denoise`` (default): (a_clean − a_corrupted) · ∂metric/∂a at the
    corrupted run; ``noise``: (a_corrupted − a_clean) · ∂metric/∂a at the clean run. ``positions`` (ints,
    negative from the end) restricts the positions axis; ``component_map`` describes an unknown layout.
    ``batch_size``: pairs per pass (``None``: planned from measured passes, halved on out-of-memory).
    AtP*'s fixes (:mod:`attrib.methods.atp_star`): ``qk_fix=True`` recomputes the pattern exactly for the ``q_rot`` /
    ``k_rot`` components (through attention probes, which stay installed: :mod:`attrib.models.probes`); ``grad_drop=True`` scores every component by the mean |estimate| with each layer's
    gradient dropped in turn (L more backward passes; a ranking score, no longer signed).
    """
    check_grad_mode("attribution_patching", model)
    batch_size = check_batch_size(batch_size)
    pairs = prepare_pairs(model, clean, corrupted, target=target, contrast=contrast, score=score, metric=metric,
                          components=components, direction=direction, component_map=component_map,
                          positions=positions)
    per_pair = _nan_scores(pairs)
    m_source, m_receiving = torch.empty(pairs.n_pairs, dtype=torch.float64), torch.empty(pairs.n_pairs,
                                                                                        dtype=torch.float64)

    def run(items: torch.Tensor) -> None:
        dots, m_source[items], m_receiving[items] = _attribute(pairs, items, component_map, qk_fix, grad_drop)
        index, present = pairs.index[items], pairs.present[items]
        for (c, layer), dot in dots.items():
            at = index if dot.dim() == 2 else index[:, None].expand(-1, dot.shape[1], -1)
            got = dot.double().cpu().gather(-1, at)
            per_pair[c][items, layer] = got.masked_fill(~(present if dot.dim() == 2 else present[:, None]), math.nan)

    size, passes = _chunks(pairs.n_pairs, batch_size, pairs, ("attribution patching", qk_fix, grad_drop), run)
    info = {"batch_size": size, "passes": passes} if pairs.batched else {}
    info.update({"qk_fix": True} if qk_fix else {}, **({"grad_drop": True} if grad_drop else {}))
    return pairs.result("attribution_patching", per_pair, m_source, m_receiving, _score_dtype(model), **info)


def _attribute(pairs: Pairs, items: torch.Tensor, component_map: Mapping[str, Any] | None, qk_fix: bool = False,
               grad_drop: bool = False) -> tuple[dict[Key, torch.Tensor], torch.Tensor, torch.Tensor]:
    """For the pairs ``items``: diff · grad summed over the hidden dimension at every site, (rows, positions) or
    (rows, heads, positions) over the whole input (AtP*'s fixes when asked: :mod:`attrib.methods.atp_star`);
    the metric on the source and on the receiving prompt."""
    model = pairs.model
    source, receiving = pairs.source_receiving()
    sites = {**pairs.sites, **star.extra_sites(model, pairs, qk_fix, grad_drop, component_map)}
    keys = list(pairs.sites) + [k for k in sites if k[0] in ("q_rot", "k_rot") and k not in pairs.sites]
    other, m_source = _collect(pairs, source, keys, items, sites)
    acc = _score_dtype(model)
    rows = items.to(receiving.x.device)
    args, kwargs = receiving.call(rows)
    first = site(model, "resid_pre.0", component_map)
    with torch.enable_grad(), model.trace(*args, **kwargs):
        # gradients start at the first layer's input, whatever parameters are frozen
        first.write(model, first.read(model).detach().requires_grad_(True))
        acts = {key: sites[key].module_value(model).save() for key in ordered(sites, sites)}
        for key in pairs.sites:
            _by_position(sites[key], sites[key].take(acts[key]), receiving.x.shape[1])
        m_recv = receiving.scores(model.output, rows).sum(-1).save()
    wanted = [k for k in acts if k[0] not in ("attn_out", "mlp_out")]

    width = receiving.x.shape[1]

    def take(key: Key, t: torch.Tensor) -> torch.Tensor:      # outside the trace: unflatten (rows · positions) rows
        return sites[key].take(t.view(len(rows), width, -1) if sites[key].flat and t.dim() == 2 else t)

    def estimate(grads: Mapping[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
        out = {}
        for key in pairs.sites:
            diff = other[key].to(acts[key].dtype) - take(key, acts[key].detach())
            out[key] = _dot(diff, take(key, grads[key]), acc)
        if qk_fix:
            out.update(star.qk_estimates(model, pairs, sites, acts, other, grads, kwargs.get("attention_mask"), acc,
                                         component_map))
        return out

    with torch.enable_grad():                  # the caller may be under torch.no_grad()
        total = m_recv.sum()
    if not grad_drop:
        dots = estimate(dict(zip(wanted, torch.autograd.grad(total, [acts[k] for k in wanted]))))
    else:
        dots = star.grad_drop(total, acts, wanted, pairs.n_layers, estimate)
    return {k: v.detach() for k, v in dots.items()}, m_source, m_recv.detach().double().cpu()


# -- activation patching -------------------------------------------------------------------------

@releasing
def activation_patching(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                        metric: Callable[..., torch.Tensor] | None = None, score: str = "logit",
                        components: Sequence[str] | str = COMPONENTS, direction: str = "denoise",
                        component_map: Mapping[str, Any] | None = None,
                        positions: int | Sequence[int] | None = None,
                        batch_size: int | None = None, compile: Any = False,
                        reuse_prefix: bool = True) -> PatchingResult:
    """Activation patching (Meng et al. 2022; the exact quantity that attribution patching estimates): for
    each component × layer × position (× head), metric(receiving run with that one activation taken from the
    other prompt) − metric(receiving run).

    >>> import torch, transformers, attrib
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
    >>> hf = transformers.GPT2LMHeadModel(config)
    >>> r = activation_patching(attrib.LanguageModel(hf.eval()), torch.tensor([[1, 2, 3]]),
    ...                         torch.tensor([[1, 4, 3]]), target=7, components="heads", positions=-1, batch_size=8)
    >>> tuple(r.scores["heads"].shape), r.positions, r.info["forwards"]   # 2 × 4 patched rows in one forward
    ((2, 4, 1), [2], 1)

    The receiving run is the corrupted prompt for ``denoise``, the clean one for ``noise``. Each patch is
    one row of a batched forward of ``batch_size`` rows (``None``: planned from measured passes,
    :mod:`attrib.methods.planning`; an out-of-memory error halves it and retries); with lists of pairs the rows of every pair
    share the forwards. Same arguments and result as :func:`attribution_patching`. ``compile=True`` (or
    ``attrib.methods.compiled.CompileOptions(...)``) runs the patched forwards through ``torch.compile``
    (:mod:`attrib.methods.compiled_patching`). ``reuse_prefix`` (default): in a causal language model scored by
    ``target``, a forward whose patches all sit at position p or later runs positions p, p+1, … only, on the
    receiving prompts' cached keys and values before p (:mod:`attrib.methods.prefix`; ``info["prefix_reuse"]``
    says whether it ran); ``False`` runs every position.
    """
    batch_size = check_batch_size(batch_size)
    options = options_of(compile)
    pairs = prepare_pairs(model, clean, corrupted, target=target, contrast=contrast, score=score, metric=metric,
                          components=components, direction=direction, component_map=component_map,
                          positions=positions)
    if options is not None:
        check_patching_supported(pairs, options)
    source, receiving = pairs.source_receiving()
    everyone = torch.arange(pairs.n_pairs)
    sources, m_source = _collect(pairs, source, list(pairs.sites), everyone)
    layers = [model.module.get_submodule(site(model, f"resid_post.{layer}", component_map).path)
              for layer in range(pairs.n_layers)] if reuse_prefix and options is None else []
    reuse = bool(layers) and can_reuse(model, receiving, layers)
    extra, cache = fill_cache(model) if reuse else ({}, None)
    _, m_recv = _collect(pairs, receiving, [], everyone, **extra)
    prefix = read_prefix(model, cache, receiving, pairs.n_layers) if reuse else None
    rows: list[tuple[int, int, int, int, int, int]] = []   # (pair, component, layer, head or 0, input index, column)
    for c_id, c in enumerate(pairs.components):
        for layer in range(pairs.n_layers):
            for h in (range(pairs.heads_of(c)) if c in HEADED else (0,)):
                for i, j in pairs.present.nonzero().tolist():
                    rows.append((i, c_id, layer, h, int(pairs.index[i, j]), j))
    plan = torch.tensor(rows, dtype=torch.long)
    if prefix is not None:          # by patched position: a chunk then starts as late as its rows allow
        plan = plan[torch.argsort(plan[:, 4], stable=True)]
    values = torch.empty(len(rows), dtype=torch.float64)

    def traced(part: torch.Tensor) -> torch.Tensor:
        return _patched(pairs, receiving, sources, part, prefix)

    # with the prefix every pass holds a cache of all positions (an empty one where it starts at 0), so the first
    # passes, which start earliest, measure the most a row takes: their own plan
    kind = ("activation patching", "prefix") if prefix is not None else ("activation patching",)
    with (patch_passes(pairs, receiving, sources, options, _remember(pairs, kind), batch_size, traced, len(rows))
          if options is not None else contextlib.nullcontext(traced)) as patched:
        def run(chunk: torch.Tensor) -> None:
            part = plan[chunk]
            values[chunk] = patched(part) - m_recv[part[:, 0]]

        size, n_forwards = _chunks(len(rows), batch_size, pairs, kind, run)
    per_pair = _nan_scores(pairs)
    for c_id, c in enumerate(pairs.components):
        mine = plan[:, 1] == c_id
        i, layer, h, j = plan[mine][:, [0, 2, 3, 5]].unbind(1)
        per_pair[c][(i, layer, h, j) if c in HEADED else (i, layer, j)] = values[mine]
    return pairs.result("activation_patching", per_pair, m_source, m_recv, _score_dtype(model), batch_size=size,
                        forwards=n_forwards, prefix_reuse=prefix is not None,
                        **({"compile": True} if options is not None else {}))


def _patched(pairs: Pairs, receiving: Inputs, sources: dict[Key, torch.Tensor], chunk: torch.Tensor,
             prefix: Prefix | None = None) -> torch.Tensor:
    """One batched forward of the receiving prompts, row r being pair ``chunk[r, 0]`` patched as the rest of
    ``chunk[r]`` says; its metric (rows,). With ``prefix``, the forward starts at the chunk's first patched
    position, on the cached keys and values of the positions before it."""
    model = pairs.model
    start = prefix.start(int(chunk[:, 4].min())) if prefix is not None else None
    groups: dict[Key, torch.Tensor] = {}
    for c_id, layer in torch.unique(chunk[:, 1:3], dim=0).tolist():
        groups[(pairs.components[c_id], layer)] = torch.nonzero((chunk[:, 1] == c_id) & (chunk[:, 2] == layer)).flatten()
    keys = pairs.ordered(groups)
    # (row, pair, position, head) of every patch, by site: copied to a device once per pass (a copy from pageable
    # memory waits for the GPU's queue, and one per site and index made the batch wait for its kernels 120 times)
    rows = torch.cat([groups[key] for key in keys])
    table = torch.stack([rows, chunk[rows, 0], chunk[rows, 4], chunk[rows, 3]], 1)
    sizes = [len(groups[key]) for key in keys]
    copies: dict[torch.device, list[torch.Tensor]] = {}
    items = chunk[:, 0].to(receiving.x.device)
    args, kwargs = prefix.call(receiving, items, start) if prefix is not None else receiving.call(items)
    start = start or 0
    with torch.no_grad(), model.trace(*args, **kwargs):
        for i, key in enumerate(keys):
            where = pairs.sites[key]
            value = where.read(model)
            # the run's positions from ``start`` on; keys read after the cache joined them hold every position
            shift = 0 if value.dim() > 1 and value.shape[1] == receiving.x.shape[1] else start
            new = _by_position(where, value, receiving.x.shape[1] - shift).clone()
            here = new.device                   # the site's own device (a dispatched model's layers differ)
            if here not in copies:
                copies[here] = list(table.to(here).split(sizes))
            row, pair, at, head = copies[here][i].unbind(1)
            source = sources[key].to(device=here, dtype=new.dtype)
            if key[0] in HEADED:
                new[row, at - shift, head] = source[pair, at, head]
            else:
                new[row, at - shift] = source[pair, at]
            where.write(model, new)
        out = receiving.scores(model.output, items).sum(-1).save()
    return out.double().cpu()
