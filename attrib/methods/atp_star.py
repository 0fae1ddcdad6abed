"""AtP*'s two fixes to attribution patching (Kramár, Lieberum, Shah & Nanda 2024, "AtP*: An efficient and
scalable method for localizing LLM behaviour to components", arXiv:2403.00745).

>>> import torch
>>> from attrib.methods.atp_star import query_fix
>>> q_new = torch.tensor([[[[0.0, 4.0]]]]).expand(1, 2, 1, 2)      # (rows, positions, heads, d_head)
>>> k = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])                 # (rows, positions, kv heads, d_head)
>>> pattern = torch.tensor([[[[1.0, 0.0]], [[0.5, 0.5]]]])            # (rows, queries, heads, keys)
>>> grad = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]]]])               # ∂metric/∂pattern
>>> valid = torch.tensor([[[True, False], [True, True]]])            # causal
>>> q = torch.zeros_like(q_new)                                         # the run's query: even scores
>>> round(float(query_fix(q_new, q, k, pattern, grad, valid, 1.0)[0, 0, 1]), 4)   # row 1 moves: e⁴/(1+e⁴) − ½
0.482

- **QK fix.** A query or key patch moves the attention scores, and the softmax saturates, so a linear estimate
  through the query or key misses most of the effect. The fix recomputes the patched pattern exactly and keeps
  the rest linear: Σ (A' − A) · ∂metric/∂A. A query patch at position t changes row t of its head's pattern; a
  key patch at position s changes column s of every row of the heads that read that key (all query heads of a
  key/value group), through the softmax's normaliser. Used by ``attribution_patching(..., qk_fix=True)`` for the
  components ``q_rot`` and ``k_rot`` (the query and key as the scores use them, after any rotary embedding).
- **GradDrop.** A node's effect can cancel along different paths. The estimate is recomputed with the gradient
  through each layer's residual contribution (its attention and MLP outputs) dropped in turn, and AtP*'s score
  is the mean of the absolute values, (1 / (L − 1)) Σ_ℓ |AtP₋ℓ(n)|: a ranking score meant to lower false
  negatives, no longer a signed estimate. Used by ``attribution_patching(..., grad_drop=True)``. The
  1 / (L − 1) assumes one dropped layer silences the node (true of heads, attention and MLP outputs); a
  ``resid`` node is silenced by none, so its score is L / (L − 1) × |AtP|: compare it with its own kind.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..errors import MethodError

__all__ = ["query_fix", "key_fix"]


def _group(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Key / value heads repeated for the query heads they serve (grouped-query attention)."""
    return k.repeat_interleave(n_heads // k.shape[2], dim=2) if k.shape[2] != n_heads else k


def _log(pattern: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log of the pattern, −inf where a query may not see a key. Working from the pattern itself keeps whatever
    the model added to the scores (sliding windows, position biases): a patch only adds to them."""
    seen = valid[:, :, None, :].expand_as(pattern)
    return torch.where(seen & (pattern > 0), pattern.clamp_min(torch.finfo(pattern.dtype).tiny).log(),
                       torch.full_like(pattern, float("-inf")))


def query_fix(q_new: torch.Tensor, q: torch.Tensor, k: torch.Tensor, pattern: torch.Tensor, grad: torch.Tensor,
              valid: torch.Tensor, scale: float) -> torch.Tensor:
    """(rows, heads, positions): for each head and query position t, Σ_j (A'_tj − A_tj) · ∂m/∂A_tj where row t
    is recomputed with the query ``q_new`` (rows, positions, heads, d_head) instead of ``q``: its scores move by
    scale · (q_new − q) · k_j (each row of a softmax depends on its own query only)."""
    shift = torch.einsum("bthd,bjhd->bthj", q_new - q, _group(k, q.shape[2])) * scale
    new = torch.softmax(_log(pattern, valid) + shift, -1).nan_to_num(0.0)      # fully masked rows: no weights
    return ((new - pattern) * grad).sum(-1).transpose(1, 2)


def key_fix(q: torch.Tensor, k: torch.Tensor, k_new: torch.Tensor, pattern: torch.Tensor, grad: torch.Tensor,
            valid: torch.Tensor, scale: float) -> torch.Tensor:
    """(rows, key/value heads, positions): for each key/value head g and key position s, Σ over the query heads of
    g and every query t of Σ_j (A'_tj − A_tj) · ∂m/∂A_tj, where key s of head g is replaced by ``k_new``.

    Only column s of the scores moves, by δ = scale · q_t · (k_new_s − k_s): in log space, with
    L_ts = log Σ_{j≠s} A_tj (the rest of the row, exact even when A_ts rounds to 1), the new normaliser is
    log r = −logaddexp(L_ts, log A_ts + δ); A'_ts = A_ts e^(δ) r and A'_tj = A_tj r otherwise."""
    n_heads, n_kv = q.shape[2], k.shape[2]
    log_a = _log(pattern, valid)                                                # (b, t, h, j)
    t = pattern.shape[-1]
    others = torch.where(torch.eye(t, dtype=torch.bool, device=q.device), float("-inf"), 0.0)
    rest = torch.logsumexp(log_a[..., None, :] + others, -1)                    # (b, t, h, s): log Σ_{j≠s} A_tj
    delta = torch.einsum("bthd,bshd->bths", q, _group(k_new - k, n_heads)) * scale
    moved = log_a + delta                                                       # log(A_ts e^δ)
    log_r = -torch.logaddexp(rest, moved)                                       # −inf + … stays finite: rows sum to 1
    row = (pattern * grad).sum(-1, keepdim=True)                                # Σ_j A_tj g_tj
    col = pattern * grad                                                        # A_ts g_ts
    seen = valid[:, :, None, :].expand_as(pattern) & (pattern > 0)
    effect = torch.expm1(log_r) * (row - col) + (torch.exp(moved + log_r) - pattern) * grad
    effect = torch.where(seen, effect, torch.zeros_like(effect)).sum(1)         # over queries: (b, h, s)
    return effect.view(effect.shape[0], n_kv, n_heads // n_kv, -1).sum(2)      # over the group's query heads


# -- wiring into attribution patching ------------------------------------------------------------

def extra_sites(model: Any, pairs: Any, qk_fix: bool, grad_drop: bool, component_map: Any) -> dict:
    """The sites the fixes read besides the components: the rotated query and key and the pattern of every layer
    with a q_rot / k_rot component (QK fix); every layer's attention and MLP output (GradDrop)."""
    from ..models.sites import site

    extra = {}
    if qk_fix:
        softcap = getattr(getattr(model.module, "config", None), "attn_logit_softcapping", None)
        if softcap:
            raise MethodError(f"qk_fix=True recomputes the softmax from the pattern and a shift of the scores, but this "
                              f"model caps its scores (attn_logit_softcapping={softcap}), so a shift is not additive; "
                              "use attribution_patching without qk_fix, or activation_patching.")
        if not {"q_rot", "k_rot"} & set(pairs.components):
            raise MethodError("qk_fix=True fixes the estimates of queries and keys: add 'q_rot' and/or 'k_rot' (the "
                              "query and key after the rotary embedding) to components.")
        for layer in range(pairs.n_layers):
            for kind in ("q_rot", "k_rot", "pattern"):
                extra[(kind, layer)] = site(model, f"{kind}.{layer}", component_map)
    if grad_drop:
        for layer in range(pairs.n_layers):
            for kind in ("attn_out", "mlp_out"):
                extra[(kind, layer)] = site(model, f"{kind}.{layer}", component_map)
    return {k: v for k, v in extra.items() if k not in pairs.sites}


def qk_estimates(model: Any, pairs: Any, sites: Mapping, acts: Mapping, other: Mapping, grads: Mapping,
                 mask: torch.Tensor | None, acc: torch.dtype, component_map: Any = None) -> dict:
    """The QK-fixed estimates of the q_rot / k_rot components, (rows, heads, positions) per layer."""
    out = {}
    for layer in range(pairs.n_layers):
        want = [c for c in ("q_rot", "k_rot") if c in pairs.components]
        if not want:
            continue
        q = sites[("q_rot", layer)].take(acts[("q_rot", layer)].detach()).to(acc)
        k = sites[("k_rot", layer)].take(acts[("k_rot", layer)].detach()).to(acc)
        pattern = sites[("pattern", layer)].take(acts[("pattern", layer)].detach()).to(acc)
        grad = sites[("pattern", layer)].take(grads[("pattern", layer)]).to(acc)
        rows, t = q.shape[0], q.shape[1]
        valid = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()[None].expand(rows, t, t)
        if mask is not None:
            valid = valid & mask[:, None, :t].bool().to(q.device)
        scale = _scale(model, layer, q.shape[-1], component_map)
        if "q_rot" in want:
            out[("q_rot", layer)] = query_fix(other[("q_rot", layer)].to(acc), q, k, pattern, grad, valid, scale)
        if "k_rot" in want:
            out[("k_rot", layer)] = key_fix(q, k, other[("k_rot", layer)].to(acc), pattern, grad, valid, scale)
    return out


def grad_drop(total: torch.Tensor, acts: Mapping, wanted: list, n_layers: int,
              estimate: Callable[[Mapping], Mapping]) -> dict:
    """(1 / (L − 1)) Σ_ℓ |estimate with the gradient through layer ℓ's attention and MLP outputs dropped|."""
    summed: dict = {}
    for layer in range(n_layers):
        dropped = [acts[(kind, layer)].register_hook(torch.zeros_like) for kind in ("attn_out", "mlp_out")]
        try:
            grads = torch.autograd.grad(total, [acts[k] for k in wanted], retain_graph=True, allow_unused=True)
        finally:
            for handle in dropped:
                handle.remove()
        grads = [torch.zeros_like(acts[k]) if g is None else g for k, g in zip(wanted, grads)]
        for key, value in estimate(dict(zip(wanted, grads))).items():
            summed[key] = summed.get(key, 0) + value.abs()
    return {k: v / max(1, n_layers - 1) for k, v in summed.items()}


def _scale(model: Any, layer: int, d_head: int, component_map: Any = None) -> float:
    """The factor the attention function multiplies query · key by, as the probe recorded it in the run (OPT scales
    its query before and passes 1.0); else the module's ``scaling``, else 1 / √d_head."""
    from ..models.probes import attention_path
    from ..models.sites import layout_for

    layout = layout_for(model, component_map)
    attn = model.module.get_submodule(f"{layout.layers}.{layer}.{attention_path(layout)}")
    for scaling in (attn.__dict__.get("_attrib_scaling"), getattr(attn, "scaling", None)):
        if isinstance(scaling, (int, float)):
            return float(scaling)
    return d_head ** -0.5
