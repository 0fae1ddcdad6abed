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
the same number of tokens, so that positions correspond; otherwise a :class:`MethodError` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from ..core.model import LanguageModel, Model
from ..core.release import free_after_oom, is_oom, releasing
from ..errors import MethodError
from .common import _accepts, lm_kwargs, prepare, token_strings
from .components import COMPONENTS, Sites, normalize_components, normalize_positions, patch_rows, resolve_layout
from ..viz.labels import quoted
from .targets import SCORES, Target, resolve_target

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..viz.options import HeatmapOptions

__all__ = ["PatchingResult", "attribution_patching", "activation_patching", "DIRECTIONS"]

DIRECTIONS = ("denoise", "noise")
Key = tuple[str, int]


@dataclass(frozen=True)
class PatchingResult:
    """Scores of patching each component, with the metric on both prompts.

    >>> r = PatchingResult({"resid": torch.tensor([[0.5, -2.0]])}, ["a", " b"], [0, 1], "activation_patching",
    ...                    "denoise", 1.0, -1.0, " x")
    >>> r.top(1)
    [('resid', (0, 1), -2.0)]

    - ``scores["resid" | "attn" | "mlp"]``: (layers, positions); ``scores["heads"]``: (layers, heads, positions).
      The positions axis covers ``positions`` (all prompt positions unless a subset was asked for).
    - Each score estimates (attribution patching) or measures (activation patching) metric(patched) −
      metric(receiving run): for ``denoise`` the gain from restoring that clean activation into the
      corrupted run, for ``noise`` the change from putting the corrupted activation into the clean run.
    """

    scores: dict[str, torch.Tensor]
    tokens: list[str]
    positions: list[int]
    method: str
    direction: str
    metric_clean: float
    metric_corrupted: float
    target: str
    info: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 5) -> list[tuple[str, tuple[int, ...], float]]:
        """The ``k`` largest-|score| entries as ``(component, index, value)``; ``index`` is (layer, position)
        or (layer, head, position), positions being prompt positions (not axis indices)."""
        entries: list[tuple[str, tuple[int, ...], float]] = []
        for comp, values in self.scores.items():
            flat = values.flatten()
            for i in flat.abs().argsort(descending=True)[:k].tolist():
                index = list(torch.unravel_index(torch.tensor(i), values.shape))
                index[-1] = self.positions[int(index[-1])]
                entries.append((comp, tuple(int(j) for j in index), float(flat[i])))
        return sorted(entries, key=lambda e: -abs(e[2]))[:k]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for JSON."""
        return {"method": self.method, "direction": self.direction, "target": self.target,
                "tokens": list(self.tokens), "positions": list(self.positions),
                "metric_clean": self.metric_clean, "metric_corrupted": self.metric_corrupted,
                "scores": {c: v.detach().cpu().tolist() for c, v in self.scores.items()}}

    def __str__(self) -> str:
        top = "  ".join(f"{c}{list(i)} {v:+.3f}" for c, i, v in self.top(3))
        return (f"{self.method} ({self.direction}) for {quoted(self.target)}: metric clean {self.metric_clean:.3f}, "
                f"corrupted {self.metric_corrupted:.3f}; top: {top}")

    def plot(self, component: str = "resid", *, position: int | None = None,
             options: HeatmapOptions | None = None, **overrides: Any) -> Figure:
        """A matplotlib Figure, diverging and symmetric around zero: layer × position for resid/attn/mlp;
        layer × head for heads, summed over positions or at prompt position ``position`` (negative counts
        from the end). ``options``: an ``attrib.viz.HeatmapOptions``; ``overrides``: its fields."""
        from ..viz.heatmap import layer_head_figure, layer_position_figure
        from ..viz.options import resolve, with_defaults
        from ..viz.results import patching_title

        if component not in self.scores:
            raise MethodError(f"no scores for {component!r}; this result has {', '.join(self.scores)}.")
        values = self.scores[component].detach().cpu().double().numpy()
        opts = with_defaults(resolve(options, **overrides), units="Δ metric")
        title = patching_title(self, component)
        if component != "heads":
            return layer_position_figure(values, self.tokens, with_defaults(opts, title=title),
                                         positions=self.positions)
        if position is None:
            values, where = values.sum(-1), "summed over positions"
        else:
            p = position % len(self.tokens)
            if p not in self.positions:
                raise MethodError(f"position {position} was not patched; patched positions: {self.positions}.")
            values, where = values[:, :, self.positions.index(p)], f"at position {p} ({self.tokens[p]!r})"
        return layer_head_figure(values, with_defaults(opts, title=f"{title}\n{where}"))

    def _repr_html_(self) -> str:
        """Jupyter's rendering: a summary line, the top entries and a layer × position table (escaped)."""
        from ..viz.results import patching_html

        return patching_html(self)


# -- inputs and the metric -----------------------------------------------------------------------

@dataclass
class _Setup:
    model: Model
    clean: torch.Tensor          # (1, T, ...) inputs, continuation appended
    corrupted: torch.Tensor
    target: Target
    tokens: list[str]
    keep: int                    # logits to compute (0: all)
    hf_style: bool               # the module takes input_ids=..., attention_mask=...

    def call(self, ids: torch.Tensor, rows: int = 1) -> tuple[tuple, dict]:
        return _call(self.model, self.hf_style, ids, rows, self.keep)

    def score(self, output: Any) -> torch.Tensor:
        logits = output.logits if hasattr(output, "logits") else output
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if self.target.metric is None and logits.dim() == 2:
            logits = logits.unsqueeze(1)        # a classifier: (batch, classes)
        return self.target.scores(logits)


def _call(model: Model, hf_style: bool, ids: torch.Tensor, rows: int, keep: int) -> tuple[tuple, dict]:
    """Arguments of a forward on ``rows`` copies of the one prompt ``ids``."""
    ids = ids.expand(rows, *ids.shape[1:]) if rows != ids.shape[0] else ids
    if hf_style:
        mask = torch.ones(ids.shape[:2], dtype=torch.long, device=ids.device)
        return (), lm_kwargs(model, ids, mask, keep)
    return (ids,), {}


def _as_ids(model: Model, prompt: Any, what: str) -> torch.Tensor:
    if isinstance(prompt, str):
        if not isinstance(model, LanguageModel):
            raise MethodError(f"{what} is text, but the model is an attrib.Model without a tokenizer; pass tensors "
                              "or wrap it with attrib.LanguageModel(hf_model, tokenizer).")
        return model.tokenize(prompt)["input_ids"]
    if isinstance(prompt, torch.Tensor):
        out = prompt.unsqueeze(0) if prompt.dim() == 1 and not prompt.is_floating_point() else prompt
        if out.shape[0] != 1:
            raise MethodError(f"{what} must be one prompt (batch size 1), got shape {tuple(prompt.shape)}.")
        return out.to(model.device)
    raise MethodError(f"{what} must be one prompt: a string or a tensor, got {type(prompt).__name__}.")


def _setup(model: Model, clean: Any, corrupted: Any, target: Any, contrast: Any, score: str,
           metric: Callable | None) -> _Setup:
    hf_style = _accepts(model.module, "input_ids")
    lm = isinstance(model, LanguageModel)
    clean_ids = _as_ids(model, clean, "clean")
    if lm:  # the target (None: the clean prompt's top token) and its teacher-forced continuation
        prep = prepare(model, clean_ids, target, contrast, score, metric)
        clean_ids, tgt = prep.input_ids, prep.targets[0]
    else:
        last = None
        if target is None and metric is None:
            with torch.no_grad():
                args, kwargs = _call(model, hf_style, clean_ids, 1, 1)
                out = model.module(*args, **kwargs)
            logits = out.logits if hasattr(out, "logits") else out
            last = logits[0, -1] if logits.dim() == 3 else logits[0]
        tgt = _target(model, last, target, contrast, score, metric)
    corr_ids = _as_ids(model, corrupted, "corrupted")
    if tgt.continuation():
        corr_ids = torch.cat([corr_ids, torch.tensor([tgt.continuation()], device=corr_ids.device,
                                                     dtype=corr_ids.dtype)], 1)
    ids_like = clean_ids.dim() == 2 and not clean_ids.is_floating_point()
    if corr_ids.shape != clean_ids.shape:
        def shown(ids: torch.Tensor) -> str:
            return str(token_strings(model, ids[0].tolist())) if lm else str(tuple(ids.shape))
        raise MethodError(
            f"clean and corrupted must have the same number of tokens so that positions correspond: clean has "
            f"{clean_ids.shape[1]} {shown(clean_ids)}, corrupted has {corr_ids.shape[1]} {shown(corr_ids)}; "
            "reword one of them (e.g. names that are one token each)."
        )
    tokens = token_strings(model, clean_ids[0].tolist()) if lm else \
        [str(i) for i in (clean_ids[0].tolist() if ids_like else range(clean_ids.shape[1]))]
    return _Setup(model, clean_ids, corr_ids, tgt, tokens, 0 if tgt.metric is not None else tgt.n_tokens, hf_style)


def _target(model: Model, last: torch.Tensor | None, target: Any, contrast: Any, score: str,
            metric: Callable | None) -> Target:
    """The target of a plain attrib.Model: output indices (ints), or a metric."""
    if hasattr(model.module, "config"):
        return resolve_target(model, last, target, contrast, score, metric)
    if score not in SCORES:
        raise MethodError(f"score={score!r} is not one of {', '.join(SCORES)}.")
    if metric is not None and target is None:
        return Target(ids=(), contrast_ids=None, score=score, text="metric", metric=metric)
    ids = []
    for value, what in ((int(last.argmax()) if target is None else target, "target"), (contrast, "contrast")):
        value = [value] if isinstance(value, int) else value
        if value is not None and not (isinstance(value, (list, tuple)) and value
                                      and all(isinstance(v, int) for v in value)):
            raise MethodError(f"{what}={value!r}: a plain attrib.Model takes output indices (ints).")
        ids.append(None if value is None else tuple(value))
    if ids[1] is not None and len(ids[1]) != len(ids[0]):
        raise MethodError("contrast must have as many indices as target.")
    return Target(ids=ids[0], contrast_ids=ids[1], score=score, text=str(list(ids[0])), metric=metric,
                  contrast_text=str(list(ids[1])) if ids[1] is not None else "")


def _collect(setup: _Setup, sites: Sites, ids: torch.Tensor,
             keys: Sequence[Key]) -> tuple[dict[Key, torch.Tensor], float]:
    """One no-grad forward: the component values at ``keys`` and the metric."""
    model = setup.model
    args, kwargs = setup.call(ids)
    with torch.no_grad(), model.trace(*args, **kwargs):
        values = {key: sites.read(*key).save() for key in sites.schedule(keys)}
        metric = setup.score(model.output).save()
    return values, float(metric[0])


def _common(model: Model, clean: Any, corrupted: Any, target: Any, contrast: Any, score: str,
            metric: Callable | None, components: Sequence[str] | str, direction: str,
            component_map: Mapping[str, Any] | None,
            positions: Any) -> tuple[tuple[str, ...], Sites, _Setup, list[int], list[Key]]:
    comps = normalize_components(components)
    if direction not in DIRECTIONS:
        raise MethodError(f"direction={direction!r} is not one of 'denoise' (patch clean into corrupted) or "
                          "'noise' (patch corrupted into clean).")
    if not isinstance(model, Model):
        raise MethodError(f"model must be an attrib.Model or attrib.LanguageModel, got {type(model).__name__}.")
    sites = Sites(model, resolve_layout(model, component_map, comps))
    setup = _setup(model, clean, corrupted, target, contrast, score, metric)
    pos = normalize_positions(positions, setup.clean.shape[1])
    keys = [(c, layer) for c in comps for layer in range(sites.n_layers)]
    return comps, sites, setup, pos, keys


def _result(method: str, direction: str, comps: Sequence[str], scores: dict[str, torch.Tensor], setup: _Setup,
            pos: list[int], m_clean: float, m_corr: float, **info: Any) -> PatchingResult:
    return PatchingResult({c: scores[c] for c in comps}, setup.tokens, pos, method, direction, m_clean, m_corr,
                          setup.target.describe(), dict(info))


# -- attribution patching ------------------------------------------------------------------------

@releasing
def attribution_patching(model: Model, clean: Any, corrupted: Any, *, target: Any = None, contrast: Any = None,
                         metric: Callable[[torch.Tensor], torch.Tensor] | None = None, score: str = "logit",
                         components: Sequence[str] | str = COMPONENTS, direction: str = "denoise",
                         component_map: Mapping[str, Any] | None = None,
                         positions: int | Sequence[int] | None = None) -> PatchingResult:
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

    ``clean`` and ``corrupted`` are one prompt each (text or token ids) of the same number of tokens, else
    a :class:`MethodError` says so. ``denoise`` (default): (a_clean − a_corrupted) · ∂metric/∂a at the
    corrupted run; ``noise``: (a_corrupted − a_clean) · ∂metric/∂a at the clean run. ``positions`` (ints,
    negative from the end) restricts the positions axis; ``component_map`` describes an unknown layout (see
    :mod:`attrib.methods.components`). Returns a :class:`PatchingResult`; see the module's example.
    """
    comps, sites, setup, pos, keys = _common(model, clean, corrupted, target, contrast, score, metric,
                                             components, direction, component_map, positions)
    source, receiving = (setup.clean, setup.corrupted) if direction == "denoise" else (setup.corrupted, setup.clean)
    other, m_source = _collect(setup, sites, source, keys)
    needs_leaf = not any(p.requires_grad for p in model.module.parameters())
    dots: dict[Key, torch.Tensor] = {}
    acc = torch.float64 if model.dtype == torch.float64 else torch.float32
    args, kwargs = setup.call(receiving)
    with torch.enable_grad(), model.trace(*args, **kwargs):
        if needs_leaf:  # frozen weights: let gradients start at the first layer's input
            sites.layers[0].input = sites.layers[0].input.detach().requires_grad_(True)
        acts = [(key, sites.read(*key)) for key in sites.schedule(keys)]
        m_recv = setup.score(model.output)
        with m_recv.sum().backward():
            for key, act in reversed(acts):
                diff = other[key].to(act.dtype) - act.detach()
                prod = (diff.to(acc) * act.grad.to(acc))[0]
                prod = sites.split_heads(prod).sum(-1).T if key[0] == "heads" else prod.sum(-1)
                dots[key] = prod[..., pos].save()
        m_recv = m_recv.detach().save()
    scores = {c: torch.stack([dots[(c, layer)] for layer in range(sites.n_layers)]).cpu() for c in comps}
    m_recv_f = float(m_recv[0])
    m_clean, m_corr = (m_source, m_recv_f) if direction == "denoise" else (m_recv_f, m_source)
    return _result("attribution_patching", direction, comps, scores, setup, pos, m_clean, m_corr)


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
    comps, sites, setup, pos, keys = _common(model, clean, corrupted, target, contrast, score, metric,
                                             components, direction, component_map, positions)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise MethodError(f"batch_size must be a positive int or None, got {batch_size!r}.")
    source, receiving = (setup.clean, setup.corrupted) if direction == "denoise" else (setup.corrupted, setup.clean)
    sources, m_source = _collect(setup, sites, source, keys)
    _, m_recv = _collect(setup, sites, receiving, [])
    comp_id = {c: i for i, c in enumerate(comps)}
    rows: list[tuple[int, int, int, int]] = []      # (component, layer, head or -1, position)
    for c in comps:
        for layer in range(sites.n_layers):
            for h in (range(sites.n_heads) if c == "heads" else (-1,)):
                rows.extend((comp_id[c], layer, h, p) for p in pos)
    plan = torch.tensor(rows, dtype=torch.long)
    values = torch.empty(len(rows), dtype=torch.float64)
    size = min(len(rows), batch_size or _default_batch(model.device, setup.clean.shape[1]))
    start, n_forwards = 0, 0
    while start < len(rows):
        chunk = plan[start:start + size]
        try:
            values[start:start + len(chunk)] = _patched(setup, sites, comps, receiving, sources, chunk) - m_recv
        except Exception as err:  # noqa: BLE001 - only out-of-memory is retried
            if is_oom(err) and size > 1:
                free_after_oom(err, model.device)
                size //= 2
                continue
            raise
        start += len(chunk)
        n_forwards += 1
    scores, offset = {}, 0   # rows run component by component, layer by layer (head by head), position by position
    for c in comps:
        shape = (sites.n_layers, sites.n_heads, len(pos)) if c == "heads" else (sites.n_layers, len(pos))
        n = math.prod(shape)
        scores[c] = values[offset:offset + n].view(shape).to(torch.float64 if model.dtype == torch.float64
                                                              else torch.float32)
        offset += n
    m_clean, m_corr = (m_source, m_recv) if direction == "denoise" else (m_recv, m_source)
    return _result("activation_patching", direction, comps, scores, setup, pos, m_clean, m_corr,
                   batch_size=size, forwards=n_forwards)


def _patched(setup: _Setup, sites: Sites, comps: Sequence[str], receiving: torch.Tensor,
             sources: dict[Key, torch.Tensor], chunk: torch.Tensor) -> torch.Tensor:
    """One batched forward of the receiving prompt, row i patched as ``chunk[i]`` says; its metric (rows,)."""
    model = setup.model
    device = model.device
    groups: dict[Key, torch.Tensor] = {}
    for c_id, layer in torch.unique(chunk[:, :2], dim=0).tolist():
        groups[(comps[c_id], layer)] = torch.nonzero((chunk[:, 0] == c_id) & (chunk[:, 1] == layer)).flatten()
    args, kwargs = setup.call(receiving, len(chunk))
    with torch.no_grad(), model.trace(*args, **kwargs):
        for key in sites.schedule(groups):
            rows = groups[key]
            heads = chunk[rows, 2].to(device) if key[0] == "heads" else None
            new = patch_rows(sites.read(*key), sources[key], rows.to(device), chunk[rows, 3].to(device), heads,
                             sites.n_heads if heads is not None else None)
            sites.write(*key, new)
        out = setup.score(model.output).save()
    return out.double().cpu()
