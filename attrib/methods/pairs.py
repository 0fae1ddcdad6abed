"""Clean/corrupted prompt pairs for the patching methods: one pair, or a batch of pairs run together.

>>> import torch, transformers, attrib
>>> from attrib.methods.pairs import prepare_pairs
>>> _ = torch.manual_seed(0)
>>> config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0)
>>> model = attrib.LanguageModel(transformers.GPT2LMHeadModel(config).eval())
>>> pairs = prepare_pairs(model, [[1, 2, 3, 4], [5, 6]], [[1, 9, 3, 4], [5, 8]], target=7, components="resid")
>>> pairs.n_pairs, pairs.length, pairs.positions     # positions of the longest prompt; prompts end together
(2, 4, [0, 1, 2, 3])
>>> pairs.present.tolist()                           # the 2-token pair has only the last two positions
[[True, True, True, True], [False, False, True, True]]

One pair (a prompt each: text, token ids of one row, a BatchEncoding of one row) gives the result it always
did. Lists of prompts (or tensors of several rows) are pairs, clean[i] with corrupted[i]: each pair must have
one number of tokens, pairs may differ. Prompts are left-padded into one batch, so the result's positions are
those of the longest prompt and every prompt ends at its last one; ``positions=-1`` is each prompt's last
token. A position that a shorter pair lacks is NaN in its per-pair scores and left out of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch

from ..core.model import Model
from ..errors import MethodError
from ..models.ids import as_int
from ..models.sites import Site, layout_for, schedule, site
from ..results import PatchingResult
from .inputs import Inputs, check_finite_inputs, prepare

__all__ = ["Pairs", "prepare_pairs", "ordered", "COMPONENTS", "EXTRA", "HEADED", "SITE_OF", "DIRECTIONS", "Key"]

COMPONENTS = ("resid", "attn", "mlp", "heads")              # the default components
EXTRA = ("q", "k", "v", "q_rot", "k_rot", "pattern")        # asked for by name (attrib.models.sites)
SITE_OF = {"resid": "resid_post", "attn": "attn_out", "mlp": "mlp_out", "heads": "z", **{c: c for c in EXTRA}}
HEADED = ("heads", *EXTRA)                                   # one score per head
DIRECTIONS = ("denoise", "noise")
Key = tuple[str, int]


@dataclass
class Pairs:
    """Clean and corrupted prompts (one row per pair) with their targets, the sites of every component and layer,
    and where each result position lies in each pair's input."""

    clean: Inputs
    corrupted: Inputs
    components: tuple[str, ...]
    sites: dict[Key, Site]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    positions: list[int]             # positions of the longest prompt (prompts aligned at their ends)
    direction: str
    length: int                      # tokens of the longest prompt
    index: torch.Tensor              # (pairs, positions): each position's index in that pair's input row
    present: torch.Tensor            # (pairs, positions): whether that pair has a token there

    @property
    def model(self) -> Model:
        return self.clean.model

    @property
    def n_pairs(self) -> int:
        return self.clean.n_items

    @property
    def batched(self) -> bool:
        """The caller gave lists of prompts: the result holds per-pair scores and their mean."""
        return not self.clean.single

    def source_receiving(self) -> tuple[Inputs, Inputs]:
        return (self.clean, self.corrupted) if self.direction == "denoise" else (self.corrupted, self.clean)

    def ordered(self, keys: Iterable[Key]) -> list[Key]:
        return ordered(self.sites, keys)

    def target_text(self) -> str:
        """The target, or the first and last of the pairs' targets when they differ."""
        described = [self.clean.describe(i) for i in range(self.n_pairs)]
        return described[0] if len(set(described)) == 1 else f"{described[0]} … {described[-1]} (one per pair)"

    def shape(self, component: str) -> tuple[int, ...]:
        """One pair's score shape: (layers, positions), or (layers, heads, positions) for heads."""
        n = len(self.positions)
        return (self.n_layers, self.heads_of(component), n) if component in HEADED else (self.n_layers, n)

    def heads_of(self, component: str) -> int:
        """How many heads a component has: key / value heads for ``k`` and ``v`` (grouped-query attention)."""
        return self.n_kv_heads if component in ("k", "v", "k_rot") else self.n_heads

    def result(self, method: str, per_pair: dict[str, torch.Tensor], m_source: torch.Tensor,
               m_receiving: torch.Tensor, dtype: torch.dtype, **info: Any) -> PatchingResult:
        """The result from per-pair scores (pairs, *shape) with NaN where a pair has no token, and each pair's
        metric on its source and receiving prompt."""
        m_clean, m_corr = (m_source, m_receiving) if self.direction == "denoise" else (m_receiving, m_source)
        m_clean, m_corr = m_clean.double().cpu(), m_corr.double().cpu()
        per_pair = {c: per_pair[c].to(dtype) for c in self.components}
        if not self.batched:
            return PatchingResult({c: v[0] for c, v in per_pair.items()}, list(self.clean.labels[0]), self.positions,
                                  method, self.direction, float(m_clean[0]), float(m_corr[0]),
                                  self.clean.describe(0), dict(info))
        mean = {c: v.double().nanmean(0).to(dtype) for c, v in per_pair.items()}
        longest = next(i for i, labels in enumerate(self.clean.labels) if len(labels) == self.length)
        described = [self.clean.describe(i) for i in range(self.n_pairs)]
        target = self.target_text()
        pairs = [{"clean": list(self.clean.labels[i]), "corrupted": list(self.corrupted.labels[i]),
                  "target": described[i], "metric_clean": float(m_clean[i]), "metric_corrupted": float(m_corr[i])}
                 for i in range(self.n_pairs)]
        return PatchingResult(mean, list(self.clean.labels[longest]), self.positions, method, self.direction,
                              float(m_clean.mean()), float(m_corr.mean()), target, dict(info, pairs=self.n_pairs),
                              per_pair=per_pair, pairs=pairs)


def ordered(sites: Mapping[Key, Site], keys: Iterable[Key]) -> list[Key]:
    """``keys`` in the order the model computes their sites."""
    by_site = {sites[k]: k for k in keys}
    return [by_site[s] for s in schedule(by_site)]


def components_of(components: Iterable[str] | str) -> tuple[str, ...]:
    names = (components,) if isinstance(components, str) else \
        tuple(components) if isinstance(components, Iterable) else (None,)
    if not all(isinstance(c, str) for c in names):
        raise MethodError(f"components={components!r:.60} is not a component name or a list of them; pass e.g. "
                          f"components=('resid', 'heads'), or leave it out for all of {', '.join(COMPONENTS)}.")
    comps = tuple(dict.fromkeys(names))
    for c in comps or ("",):
        if c not in COMPONENTS + EXTRA:
            what = f"unknown component {c!r}" if comps else "components is empty"
            raise MethodError(f"{what}; choose from {', '.join(map(repr, COMPONENTS + EXTRA))}.")
    return comps


def positions_of(positions: int | Iterable[int] | None, n: int) -> list[int]:
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


def _same_lengths(a: Inputs, b: Inputs) -> None:
    """Each pair's two prompts have one number of tokens, so that positions correspond."""
    for i in range(a.n_items):
        if not torch.equal(a.keep[i].cpu(), b.keep[i].cpu()):
            which = f" of pair {i}" if a.n_items > 1 else ""
            if len(a.labels[i]) == len(b.labels[i]):
                raise MethodError(f"clean and corrupted{which} have {len(a.labels[i])} tokens each but are padded to "
                                  "different widths, so their positions do not correspond; pass both in the same "
                                  "form (both texts, or both id tensors of one width).")
            raise MethodError(
                f"clean and corrupted{which} must have the same number of tokens so that positions correspond: clean "
                f"has {len(a.labels[i])} {a.labels[i]}, corrupted has {len(b.labels[i])} {b.labels[i]}; reword one of "
                "them (e.g. names that are one token each).")


def prepare_pairs(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                  score: str = "logit", metric: Callable | None = None, components: Iterable[str] | str = COMPONENTS,
                  direction: str = "denoise", component_map: Mapping[str, Any] | None = None,
                  positions: Any = None) -> Pairs:
    """Both prompts of every pair resolved once (the corrupted prompts score the clean prompts' targets)."""
    comps = components_of(components)
    if direction not in DIRECTIONS:
        raise MethodError(f"direction={direction!r} is not one of 'denoise' (patch clean into corrupted) or "
                          "'noise' (patch corrupted into clean).")
    a = prepare(model, clean, target=target, contrast=contrast, score=score, metric=metric, name="clean")
    metric_only = a.targets[0].metric is not None
    ids = None if metric_only else [list(t.ids) for t in a.targets]
    against = None if metric_only or a.targets[0].contrast_ids is None else [list(t.contrast_ids) for t in a.targets]

    def same_count(n: int, single: bool) -> None:
        if n != a.n_items:
            got = lambda n: f"{n} prompt{'s' if n > 1 else ''}"          # noqa: E731
            raise MethodError(f"clean has {got(a.n_items)} and corrupted has {got(n)}: patching needs one corrupted "
                              "prompt per clean prompt; pass two prompts, or two lists of the same length (pair i is "
                              "clean[i] with corrupted[i]).")

    b = prepare(model, corrupted, target=ids, contrast=against, score=score, metric=metric, name="corrupted",
                check_count=same_count)
    check_finite_inputs(a)
    check_finite_inputs(b)
    _same_lengths(a, b)
    layout = layout_for(model, component_map)
    n_layers = len(model.module.get_submodule(layout.layers))
    sites = {(c, layer): site(model, f"{SITE_OF[c]}.{layer}", component_map) for c in comps for layer in range(n_layers)}
    n_heads = layout.n_heads or 0
    headed = [c for c in comps if c in HEADED]
    if headed and not n_heads:
        raise MethodError(f"component {headed[0]!r} needs the number of attention heads: the model's config has "
                          "none; pass component_map={..., 'n_heads': ...}.")
    length = max(len(labels) for labels in a.labels)
    at = positions_of(positions, length)
    index = torch.zeros((a.n_items, len(at)), dtype=torch.long)
    present = torch.zeros((a.n_items, len(at)), dtype=torch.bool)
    for i, keep in enumerate(a.keep):
        keep = keep.cpu()
        for j, p in enumerate(at):
            own = p - (length - len(keep))           # the pair's own position: prompts end together
            if own >= 0:
                index[i, j], present[i, j] = keep[own], True
    return Pairs(a, b, comps, sites, n_layers, n_heads, layout.n_kv_heads or n_heads, at, direction, length, index,
                 present)
