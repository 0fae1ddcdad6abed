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
is the clean prompt's top next token) or ``metric(logits) -> (batch,)``. Clean and corrupted must tokenize to
the same number of tokens, so that positions correspond; otherwise a :class:`~attrib.MethodError` says so.

Components are sites (:mod:`attrib.models.sites`) of every layer: ``resid`` = ``resid_post``, ``attn`` =
``attn_out``, ``mlp`` = ``mlp_out``, ``heads`` = ``z`` (each head's output, the input of the attention's
output projection), found through the model's layout (:mod:`attrib.models.layouts`) or ``component_map``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..core.model import Model
from ..core.release import free_after_oom, is_oom, releasing
from ..errors import MethodError
from ..models.ids import as_int
from ..models.sites import Site, layout_for, schedule, site
from ..results import PatchingResult
from .inputs import Inputs, check_batch_size, check_finite_inputs, check_grad_mode, prepare

__all__ = ["attribution_patching", "activation_patching", "COMPONENTS", "DIRECTIONS"]

COMPONENTS = ("resid", "attn", "mlp", "heads")
SITE_OF = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out", "heads": "z"}
DIRECTIONS = ("denoise", "noise")
Key = tuple[str, int]


@dataclass
class _Pair:
    """Clean and corrupted prompts with one target, the sites of every component and layer."""

    clean: Inputs
    corrupted: Inputs
    components: tuple[str, ...]
    sites: dict[Key, Site]
    n_layers: int
    n_heads: int
    positions: list[int]             # prompt positions (of ``clean.labels[0]``): the result's positions axis
    direction: str

    @property
    def model(self) -> Model:
        return self.clean.model

    @property
    def at(self) -> list[int]:
        """The positions' indices in the model's input (after any padding; never the target's continuation)."""
        keep = self.clean.keep[0].tolist()
        return [keep[p] for p in self.positions]

    def source_receiving(self) -> tuple[Inputs, Inputs]:
        return (self.clean, self.corrupted) if self.direction == "denoise" else (self.corrupted, self.clean)

    def ordered(self, keys: Iterable[Key]) -> list[Key]:
        by_site = {self.sites[k]: k for k in keys}
        return [by_site[s] for s in schedule(by_site)]

    def metrics(self, m_source: float, m_receiving: float) -> tuple[float, float]:
        return (m_source, m_receiving) if self.direction == "denoise" else (m_receiving, m_source)

    def result(self, method: str, scores: dict[str, torch.Tensor], m_clean: float, m_corrupted: float,
               **info: Any) -> PatchingResult:
        return PatchingResult({c: scores[c] for c in self.components}, list(self.clean.labels[0]), self.positions,
                              method, self.direction, m_clean, m_corrupted, self.clean.describe(0), dict(info))


def _components(components: Iterable[str] | str) -> tuple[str, ...]:
    names = (components,) if isinstance(components, str) else \
        tuple(components) if isinstance(components, Iterable) else (None,)
    if not all(isinstance(c, str) for c in names):
        raise MethodError(f"components={components!r:.60} is not a component name or a list of them; pass e.g. "
                          f"components=('resid', 'heads'), or leave it out for all of {', '.join(COMPONENTS)}.")
    comps = tuple(dict.fromkeys(names))
    for c in comps or ("",):
        if c not in COMPONENTS:
            what = f"unknown component {c!r}" if comps else "components is empty"
            raise MethodError(f"{what}; choose from {', '.join(map(repr, COMPONENTS))}.")
    return comps


def _positions(positions: int | Iterable[int] | None, n: int) -> list[int]:
    """Sorted prompt positions (negative ones count from the end); ``None``: all ``n``."""
    if positions is None:
        return list(range(n))
    out = set()
    single = isinstance(positions, (int, float)) or getattr(positions, "ndim", None) == 0   # 0-d tensors, numpy
    if not single and not isinstance(positions, Iterable):
        raise MethodError(f"positions must be an int, a list of ints or None (every position), got {positions!r}.")
    for given in [positions] if single else positions:
        p = as_int(given)
        if p is None:
            raise MethodError(f"positions must be ints (token positions, negative from the end), got {given!r:.40} in "
                              f"positions={positions!r:.60}; pass e.g. positions=[1, -1].")
        if not -n <= p < n:
            raise MethodError(f"position {p} is outside the prompt of {n} tokens (positions={positions!r:.60}); pass "
                              f"positions from {-n} to {n - 1} (negative ones count from the end).")
        out.add(p % n)
    if not out:
        raise MethodError("positions is empty; pass None for every position.")
    return sorted(out)


def _pair(model: Model, clean: Any, corrupted: Any, target: Any, contrast: Any, score: str, metric: Callable | None,
          components: Iterable[str] | str, direction: str, component_map: Mapping[str, Any] | None,
          positions: Any) -> _Pair:
    comps = _components(components)
    if direction not in DIRECTIONS:
        raise MethodError(f"direction={direction!r} is not one of 'denoise' (patch clean into corrupted) or "
                          "'noise' (patch corrupted into clean).")
    a = prepare(model, clean, target=target, contrast=contrast, score=score, metric=metric, name="clean")
    if a.n_items != 1:
        raise MethodError(f"clean must be one prompt, got {a.n_items}; patch pairs one at a time.")
    t = a.targets[0]
    b = prepare(model, corrupted, target=None if t.metric is not None else list(t.ids),
                contrast=None if t.contrast_ids is None else list(t.contrast_ids), score=score, metric=metric,
                name="corrupted")
    if b.n_items != 1:
        raise MethodError(f"corrupted must be one prompt, got {b.n_items}; patch pairs one at a time.")
    check_finite_inputs(a)
    check_finite_inputs(b)
    if a.x.shape != b.x.shape or not torch.equal(a.keep[0].cpu(), b.keep[0].cpu()):
        raise MethodError(
            f"clean and corrupted must have the same number of tokens so that positions correspond: clean has "
            f"{len(a.labels[0])} {a.labels[0]}, corrupted has {len(b.labels[0])} {b.labels[0]}; reword one of them (e.g. "
            "names that are one token each)."
        )
    layout = layout_for(model, component_map)
    n_layers = len(model.module.get_submodule(layout.layers))
    sites = {(c, layer): site(model, f"{SITE_OF[c]}.{layer}", component_map) for c in comps for layer in range(n_layers)}
    n_heads = layout.n_heads or 0
    if "heads" in comps and not n_heads:
        raise MethodError("component 'heads' needs the number of attention heads: the model's config has none; "
                          "pass component_map={..., 'n_heads': ...}.")
    return _Pair(a, b, comps, sites, n_layers, n_heads, _positions(positions, len(a.labels[0])), direction)


def _collect(pair: _Pair, inputs: Inputs, keys: Sequence[Key]) -> tuple[dict[Key, torch.Tensor], float]:
    """One no-grad forward: the component values at ``keys`` and the metric."""
    model, one = pair.model, torch.zeros(1, dtype=torch.long, device=inputs.x.device)
    args, kwargs = inputs.call(one)
    with torch.no_grad(), model.trace(*args, **kwargs):
        values = {key: pair.sites[key].read(model).save() for key in pair.ordered(keys)}
        metric = inputs.scores(model.output, one).sum(-1).save()
    return values, float(metric[0])


def _by_position(where: Site, value: torch.Tensor, inputs: Inputs) -> torch.Tensor:
    """``value`` if it is (rows, positions, ...), else a clear error (a module that flattens positions)."""
    if value.dim() < 3 or value.shape[1] != inputs.x.shape[1]:
        raise MethodError(f"{where.name} ({where.path}) has a value of shape {tuple(value.shape)}, not (rows, "
                          f"{inputs.x.shape[1]} positions, ...): its module flattens the positions; pass "
                          "'flat_mlp': True in component_map, or give another module.")
    return value


def _dot(site_: Site, diff: torch.Tensor, grad: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """(positions,) or (heads, positions): Σ over the hidden (head) dimension of diff · grad, one row."""
    prod = (diff.to(acc) * grad.to(acc))[0].sum(-1)
    return prod.T if site_.heads is not None and prod.dim() == 2 else prod


# -- attribution patching ------------------------------------------------------------------------

@releasing
def attribution_patching(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                         metric: Callable[[torch.Tensor], torch.Tensor] | None = None, score: str = "logit",
                         components: Sequence[str] | str = COMPONENTS, direction: str = "denoise",
                         component_map: Mapping[str, Any] | None = None,
                         positions: int | Sequence[int] | None = None,
                         batch_size: int | None = None) -> PatchingResult:
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
    tokens. ``denoise`` (default): (a_clean − a_corrupted) · ∂metric/∂a at the corrupted run; ``noise``:
    (a_corrupted − a_clean) · ∂metric/∂a at the clean run. ``positions`` (ints, negative from the end)
    restricts the positions axis; ``component_map`` describes an unknown layout. ``batch_size`` is accepted
    for the common signature: one pair takes one forward per prompt and one backward, whatever its value.
    """
    check_grad_mode("attribution_patching", model)
    batch_size = check_batch_size(batch_size)
    pair = _pair(model, clean, corrupted, target, contrast, score, metric, components, direction, component_map,
                 positions)
    source, receiving = pair.source_receiving()
    keys = list(pair.sites)
    other, m_source = _collect(pair, source, keys)
    acc = torch.float64 if model.dtype == torch.float64 else torch.float32
    one = torch.zeros(1, dtype=torch.long, device=receiving.x.device)
    args, kwargs = receiving.call(one)
    dots: dict[Key, torch.Tensor] = {}
    first = site(model, "resid_pre.0", component_map)
    with torch.enable_grad(), model.trace(*args, **kwargs):
        # gradients start at the first layer's input, whatever parameters are frozen
        first.write(model, first.read(model).detach().requires_grad_(True))
        acts = [(key, pair.sites[key].module_value(model)) for key in pair.ordered(keys)]
        for key, act in acts:
            _by_position(pair.sites[key], pair.sites[key].take(act), receiving)
        m_recv = receiving.scores(model.output, one).sum(-1)
        with m_recv.sum().backward():
            for key, act in reversed(acts):
                where = pair.sites[key]
                diff = other[key].to(act.dtype) - where.take(act.detach())
                dots[key] = _dot(where, diff, where.take(act.grad), acc)[..., pair.at].save()
        m_recv = m_recv.detach().save()
    scores = {c: torch.stack([dots[(c, layer)] for layer in range(pair.n_layers)]).cpu() for c in pair.components}
    m_clean, m_corr = pair.metrics(m_source, float(m_recv[0]))
    return pair.result("attribution_patching", scores, m_clean, m_corr)


# -- activation patching -------------------------------------------------------------------------

def _default_batch(device: torch.device, n_tokens: int) -> int:
    budget = 32768 if device.type == "cuda" else 4096
    return max(1, budget // max(1, n_tokens))


@releasing
def activation_patching(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                        metric: Callable[[torch.Tensor], torch.Tensor] | None = None, score: str = "logit",
                        components: Sequence[str] | str = COMPONENTS, direction: str = "denoise",
                        component_map: Mapping[str, Any] | None = None,
                        positions: int | Sequence[int] | None = None,
                        batch_size: int | None = None) -> PatchingResult:
    """Activation patching (Meng et al. 2022; the exact quantity that attribution patching estimates): for
    each component × layer × position (× head), metric(receiving run with that one activation taken from the
    other prompt) − metric(receiving run).

    >>> import torch, transformers, attrib
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
    >>> hf = transformers.GPT2LMHeadModel(config)
    >>> r = activation_patching(attrib.LanguageModel(hf.eval()), torch.tensor([[1, 2, 3]]),
    ...                         torch.tensor([[1, 4, 3]]), target=7, components="heads", positions=-1)
    >>> tuple(r.scores["heads"].shape), r.positions, r.info["forwards"]   # 2 × 4 patched rows in one forward
    ((2, 4, 1), [2], 1)

    The receiving run is the corrupted prompt for ``denoise``, the clean one for ``noise``. Each patch is
    one row of a batched forward of ``batch_size`` rows (``None``: about 4096 tokens per forward on CPU,
    32768 on CUDA; an out-of-memory error halves it and retries). Same arguments and result as
    :func:`attribution_patching`.
    """
    batch_size = check_batch_size(batch_size)
    pair = _pair(model, clean, corrupted, target, contrast, score, metric, components, direction, component_map,
                 positions)
    source, receiving = pair.source_receiving()
    sources, m_source = _collect(pair, source, list(pair.sites))
    _, m_recv = _collect(pair, receiving, [])
    comps, pos, at = pair.components, pair.positions, pair.at
    rows: list[tuple[int, int, int, int]] = []      # (component, layer, head or -1, position in the input)
    for c_id, c in enumerate(comps):
        for layer in range(pair.n_layers):
            for h in (range(pair.n_heads) if c == "heads" else (-1,)):
                rows.extend((c_id, layer, h, p) for p in at)
    plan = torch.tensor(rows, dtype=torch.long)
    values = torch.empty(len(rows), dtype=torch.float64)
    size = min(len(rows), batch_size or _default_batch(model.device, receiving.x.shape[1]))
    start, n_forwards = 0, 0
    while start < len(rows):
        chunk = plan[start:start + size]
        try:
            values[start:start + len(chunk)] = _patched(pair, receiving, sources, chunk) - m_recv
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried
            if is_oom(err) and size > 1 and batch_size is None:     # a size the caller chose is kept
                free_after_oom(err, model.device)
                size //= 2
                continue
            raise
        start += len(chunk)
        n_forwards += 1
    scores, offset = {}, 0   # rows run component by component, layer by layer (head by head), position by position
    dtype = torch.float64 if model.dtype == torch.float64 else torch.float32
    for c in comps:
        shape = (pair.n_layers, pair.n_heads, len(pos)) if c == "heads" else (pair.n_layers, len(pos))
        n = math.prod(shape)
        scores[c] = values[offset:offset + n].view(shape).to(dtype)
        offset += n
    m_clean, m_corr = pair.metrics(m_source, m_recv)
    return pair.result("activation_patching", scores, m_clean, m_corr, batch_size=size, forwards=n_forwards)


def _patched(pair: _Pair, receiving: Inputs, sources: dict[Key, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
    """One batched forward of the receiving prompt, row i patched as ``chunk[i]`` says; its metric (rows,)."""
    model = pair.model
    device = receiving.x.device
    groups: dict[Key, torch.Tensor] = {}
    for c_id, layer in torch.unique(chunk[:, :2], dim=0).tolist():
        groups[(pair.components[c_id], layer)] = torch.nonzero((chunk[:, 0] == c_id) & (chunk[:, 1] == layer)).flatten()
    items = torch.zeros(len(chunk), dtype=torch.long, device=device)
    args, kwargs = receiving.call(items)
    with torch.no_grad(), model.trace(*args, **kwargs):
        for key in pair.ordered(groups):
            where, rows = pair.sites[key], groups[key].to(device)
            new = _by_position(where, where.read(model), receiving).clone()
            source = sources[key].to(new.dtype)
            at = chunk[groups[key], 3].to(device)
            if key[0] == "heads":
                heads = chunk[groups[key], 2].to(device)
                new[rows, at, heads] = source[0, at, heads]
            else:
                new[rows, at] = source[0, at]
            where.write(model, new)
        out = receiving.scores(model.output, items).sum(-1).save()
    return out.double().cpu()
