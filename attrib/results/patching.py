"""The result of attribution and activation patching: a score per component, layer, position (and head).

>>> import torch
>>> from attrib.results import PatchingResult
>>> r = PatchingResult({"resid": torch.tensor([[0.5, -2.0]])}, ["a", " b"], [0, 1], "activation_patching",
...                    "denoise", 1.0, -1.0, " x")
>>> r.top(1)
[('resid', (0, 1), -2.0)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..viz.labels import quoted
from .base import Result, check_k, jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..viz.options import HeatmapOptions

__all__ = ["PatchingResult"]


@dataclass(frozen=True)
class PatchingResult(Result):
    """Scores of patching each component, with the metric on both prompts.

    - ``scores["resid" | "attn" | "mlp"]``: (layers, positions); ``scores["heads"]``: (layers, heads, positions).
      The positions axis covers ``positions`` (all prompt positions unless a subset was asked for).
    - Each score estimates (attribution patching) or measures (activation patching) metric(patched) −
      metric(receiving run): for ``denoise`` the gain from restoring that clean activation into the
      corrupted run, for ``noise`` the change from putting the corrupted activation into the clean run.
    - A batch of pairs: ``scores`` and the metrics are means over the pairs, ``per_pair[c]`` is (pairs, *the
      shape of scores[c]*) with NaN where a shorter pair has no token, ``pairs`` describes each pair (its
      tokens, target and metrics) and :meth:`pair` gives one pair's result; ``tokens`` label the longest
      prompt, at whose positions every prompt ends.
    """

    KIND = "patching"

    scores: dict[str, torch.Tensor]
    tokens: list[str]
    positions: list[int]
    method: str
    direction: str
    metric_clean: float
    metric_corrupted: float
    target: str
    info: dict[str, Any] = field(default_factory=dict)
    per_pair: dict[str, torch.Tensor] | None = None
    pairs: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        """``positions`` are prompt positions, one per column of the scores: ints in range (negative ones
        count from the end and are stored from the start), never wrapped around past either end."""
        n, fixed = len(self.tokens), []
        for p in self.positions:
            if isinstance(p, bool) or not isinstance(p, int) or not -n <= p < n:
                raise InputError(f"positions={list(self.positions)!r:.60} must hold prompt positions, ints from {-n} "
                                 f"to {n - 1} for the {n} tokens, got {p!r}; pass the positions that were patched.")
            fixed.append(p % n)
        object.__setattr__(self, "positions", fixed)
        if (self.per_pair is None) != (self.pairs is None):
            raise InputError("per_pair and pairs come together (a batch of pairs) or not at all (one pair); pass "
                             "both or neither.")
        if self.per_pair is not None and self.pairs is not None:
            for c, values in self.scores.items():
                got = tuple(self.per_pair[c].shape) if c in self.per_pair else None
                if got != (len(self.pairs), *values.shape):
                    raise InputError(f"per_pair[{c!r}] must have shape {(len(self.pairs), *values.shape)} (pairs, "
                                     f"then the shape of scores[{c!r}]), got {got}.")

    @property
    def n_pairs(self) -> int:
        """How many prompt pairs the scores are the mean of (1 for one pair)."""
        return 1 if self.pairs is None else len(self.pairs)

    def pair(self, i: int) -> "PatchingResult":
        """Pair ``i``'s own result (its tokens and positions; negative ``i`` counts from the end)."""
        n = self.n_pairs
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise InputError(f"pair({i!r:.20}) is outside the {n} pair{'s' if n > 1 else ''} of this result; pass an "
                             f"int from {-n} to {n - 1}.")
        if self.per_pair is None or self.pairs is None:
            return self
        meta = self.pairs[i]
        shift = len(self.tokens) - len(meta["clean"])             # prompts end together
        cols = [j for j, p in enumerate(self.positions) if p >= shift]
        return PatchingResult({c: v[i][..., cols] for c, v in self.per_pair.items()}, list(meta["clean"]),
                              [self.positions[j] - shift for j in cols], self.method, self.direction,
                              meta["metric_clean"], meta["metric_corrupted"], meta["target"],
                              {k: v for k, v in self.info.items() if k != "pairs"})

    def top(self, k: int = 5) -> list[tuple[str, tuple[int, ...], float]]:
        """The ``k`` largest-|score| entries as ``(component, index, value)``; ``index`` is (layer, position)
        or (layer, head, position), positions being prompt positions (not axis indices)."""
        k = check_k(k)
        entries: list[tuple[str, tuple[int, ...], float]] = []
        for comp, values in self.scores.items():
            flat = values.flatten()
            for i in flat.abs().argsort(descending=True)[:k].tolist():
                index = list(torch.unravel_index(torch.tensor(i), values.shape))
                index[-1] = self.positions[int(index[-1])]
                entries.append((comp, tuple(int(j) for j in index), float(flat[i])))
        return sorted(entries, key=lambda e: -abs(e[2]))[:k]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**self.scores, **{f"per_pair.{c}": v for c, v in (self.per_pair or {}).items()}}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, floats, strings), e.g. for JSON; ``scores`` by component."""
        out = {"kind": self.KIND, **jsonable(self._meta()), "scores": jsonable(self.scores)}
        if self.per_pair is not None:
            out["per_pair"] = jsonable(self.per_pair)
        return out

    def _meta(self) -> dict[str, Any]:
        return {"components": list(self.scores), "tokens": list(self.tokens), "positions": list(self.positions),
                "method": self.method, "direction": self.direction, "metric_clean": self.metric_clean,
                "metric_corrupted": self.metric_corrupted, "target": self.target, "info": self.info,
                "pairs": self.pairs}

    @classmethod
    def _build(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "PatchingResult":
        pairs = meta.get("pairs")
        per_pair = None if pairs is None else {c: tensors[f"per_pair.{c}"] for c in meta["components"]}
        return cls({c: tensors[c] for c in meta["components"]}, meta["tokens"], meta["positions"], meta["method"],
                   meta["direction"], meta["metric_clean"], meta["metric_corrupted"], meta["target"], meta["info"],
                   per_pair, pairs)

    def __str__(self) -> str:
        top = "  ".join(f"{c}{list(i)} {v:+.3f}" for c, i, v in self.top(3))
        over = f", mean of {self.n_pairs} pairs" if self.pairs is not None else ""
        return (f"{self.method} ({self.direction}{over}) for {quoted(self.target)}: metric clean {self.metric_clean:.3f}, "
                f"corrupted {self.metric_corrupted:.3f}; top: {top}")

    def plot(self, component: str = "resid", *, position: int | None = None,
             options: HeatmapOptions | None = None, **overrides: Any) -> Figure:
        """A matplotlib Figure, diverging and symmetric around zero: layer × position for resid/attn/mlp;
        layer × head for heads, summed over positions or at prompt position ``position`` (negative counts
        from the end). ``options``: an ``attrib.viz.HeatmapOptions``; ``overrides``: its fields."""
        from ..viz.results import patching_figure

        return patching_figure(self, component, position, options, **overrides)

    def _repr_html_(self) -> str:
        """Jupyter's rendering: a summary line, the top entries and a layer × position table (escaped)."""
        from ..viz.results import patching_html

        return patching_html(self)
