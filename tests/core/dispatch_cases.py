"""What the dispatch tests run on a model and on its dispatched twin (CPU offload here, two GPUs in
``test_dispatch_cuda.py``): every method, a trace and a backward context, each flattened to one float64 vector."""

from __future__ import annotations

from typing import Any, Callable

import torch

import attrib


def tiny_llama(layers: int = 4, hidden: int = 32, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """A seeded random Llama of ``layers`` layers in eval mode (the layout the issue's Llama-1B check uses)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=50, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).to(dtype).eval()


def device_map(layers: int, split: int, first: Any, second: Any) -> dict[str, Any]:
    """Layers 0 … split − 1 (with the embedding) on ``first``; the rest, the norm and the head on ``second``."""
    out = {"model.embed_tokens": first, "model.rotary_emb": first}
    out.update({f"model.layers.{i}": first if i < split else second for i in range(layers)})
    out.update({"model.norm": second, "lm_head": second})
    return out


def flat(result: Any) -> torch.Tensor:
    """Every number a method returned, as one float64 vector on the CPU."""
    if isinstance(result, (list, tuple)):
        return torch.cat([flat(r) for r in result])
    if isinstance(result, torch.Tensor):
        return result.detach().double().flatten().cpu()
    if isinstance(result, attrib.Evaluation):
        return torch.cat([result.deletion.flatten(), result.insertion.flatten(), result.comprehensiveness,
                          result.sufficiency]).double()
    if isinstance(result, attrib.PathProfile):
        return torch.cat([result.f, result.rate]).double()
    if isinstance(result, attrib.Graph):
        return result.scores.double().flatten()
    if isinstance(result, attrib.PatchingResult):
        return torch.cat([v.double().flatten() for v in result.scores.values()])
    if isinstance(result, attrib.Attribution):
        parts = [result.values, result.scores] + ([result.delta] if result.delta is not None else [])
        return torch.cat([flat(p) for p in parts])
    raise TypeError(f"no flattening for {type(result).__name__}")


def devices_of(result: Any) -> set[torch.device]:
    """The devices of an Attribution's tensors (a list's: all of them)."""
    if isinstance(result, list):
        return set().union(*(devices_of(r) for r in result))
    return {t.device for t in (result.values, result.scores, result.delta) if isinstance(t, torch.Tensor)}


def trace_values(model: attrib.Model, ids: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Layer outputs and the logits from one trace (a user's trace, not a method's)."""
    with model.trace(ids):
        saved = [model.model.layers[i].output.save() for i in layers]
        logits = model.output.logits.save()
    return [*saved, logits]


def backward_grads(model: attrib.Model, ids: torch.Tensor, layers: tuple[int, ...], token: int = 7
                   ) -> list[torch.Tensor]:
    """Gradients of one logit at layer outputs, read in reverse order in a backward context, and one edited."""
    with model.trace(ids):
        hidden = [model.model.layers[i].output for i in layers]
        logits = model.output.logits
        with logits[:, -1, token].sum().backward():
            grads = []
            for h in reversed(hidden):
                grads.append(h.grad.clone().save())
                h.grad[:] = h.grad * 0.5          # an edit flows on to the earlier layers' gradients
    return grads


def method_cases(ids: torch.Tensor, mask: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor,
                 late: int) -> dict[str, Callable[[attrib.LanguageModel], Any]]:
    """Every method on a two-prompt batch (one left-padded) or a clean / corrupted pair; ``late``: a layer index
    past the first device's layers, for layer IG and the path profile."""
    enc = {"input_ids": ids, "attention_mask": mask}
    return {
        "integrated_gradients": lambda m: attrib.integrated_gradients(m, enc, target=7, n_steps=8),
        "integrated_gradients_auto": lambda m: attrib.integrated_gradients(m, ids[:1], target=7),
        "integrated_gradients_layer": lambda m: attrib.integrated_gradients(m, enc, target=7, n_steps=8,
                                                                            layer=f"resid_post.{late}"),
        "integrated_gradients_per_token": lambda m: attrib.integrated_gradients(m, ids[:1], target=[7, 8], n_steps=8,
                                                                                per_token=True),
        "saliency": lambda m: attrib.saliency(m, enc, target=7, mode="grad_x_input"),
        "attribution_patching": lambda m: attrib.attribution_patching(m, clean, corrupted, target=7, contrast=8),
        "activation_patching": lambda m: attrib.activation_patching(m, clean, corrupted, target=7, contrast=8),
        "path_profile": lambda m: attrib.path_profile(m, ids[:1], target=7, n_points=5, layer=f"resid_pre.{late}"),
        "lrp_attnlrp": lambda m: attrib.lrp(m, enc, target=7),
        "lrp_gamma": lambda m: attrib.lrp(m, enc, target=7, rules="gamma"),
        "deeplift": lambda m: attrib.deeplift(m, enc, target=7),
        "gim": lambda m: attrib.gim(m, enc, target=7),
        "gradient_shap": lambda m: attrib.gradient_shap(m, enc, target=7, seed=0),
        "edge_attribution_patching": lambda m: attrib.edge_attribution_patching(m, clean, corrupted, target=7),
        "eap_ig": lambda m: attrib.edge_attribution_patching(m, clean, corrupted, target=7, method="eap-ig",
                                                             n_steps=3),
        "edge_patching": lambda m: attrib.edge_patching(m, clean, corrupted, target=7, edges=[
            ("embed", f"M{late}"), ("L0H1", f"L{late}H2.q"), ("M0", f"L{late}KV1.v"), (f"L{late}H0", "logits")]),
        "faithfulness": lambda m: attrib.faithfulness(m, [ids[0].tolist()], ["saliency"], target=[7], n_random=1),
    }
