"""Regressions found by a hostile review of the method contract: each test failed before its fix."""

from __future__ import annotations

import types

import pytest
import torch
import transformers

import attrib
from attrib.models.layouts import layout_of
from tests.conftest import tiny_hf

CLEAN, CORRUPTED = torch.tensor([[3, 14, 15, 9]]), torch.tensor([[3, 14, 7, 9]])


def test_plain_model_results_save_although_scores_are_values(tmp_path):
    net = attrib.Model(torch.nn.Linear(3, 2).double())
    for result in (attrib.integrated_gradients(net, torch.ones(1, 3, dtype=torch.float64), target=0, n_steps=2),
                   attrib.saliency(net, torch.ones(1, 3, dtype=torch.float64), target=0, mode="grad_x_input")):
        result.save(tmp_path / "r.safetensors")
        assert torch.equal(attrib.load(tmp_path / "r.safetensors").scores, result.scores)


def test_patching_positions_are_the_prompts_own_with_a_multi_token_target():
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    full = attrib.attribution_patching(model, CLEAN, CORRUPTED, target=[7, 8], components="resid")
    assert full.positions == [0, 1, 2, 3] and full.scores["resid"].shape == (2, 4)
    last = attrib.attribution_patching(model, CLEAN, CORRUPTED, target=[7, 8], components="resid", positions=-1)
    assert last.positions == [3]
    torch.testing.assert_close(last.scores["resid"][:, 0], full.scores["resid"][:, 3], rtol=0, atol=0)
    exact = attrib.activation_patching(model, CLEAN, CORRUPTED, target=[7, 8], components="resid", positions=-1)
    assert exact.positions == [3] and exact.scores["resid"].shape == (2, 1)


def test_patching_a_left_padded_encoding_counts_real_tokens():
    model = attrib.LanguageModel(tiny_hf("llama"))
    pad = {"input_ids": torch.tensor([[0, 0, 3, 14, 15, 9]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1]])}
    padded = attrib.activation_patching(model, pad, {**pad, "input_ids": torch.tensor([[0, 0, 3, 14, 7, 9]])},
                                        target=7, components="resid")
    plain = attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components="resid")
    assert padded.positions == [0, 1, 2, 3] and len(padded.tokens) == 4
    torch.testing.assert_close(padded.scores["resid"], plain.scores["resid"], rtol=1e-9, atol=1e-12)


def test_bf16_smoothgrad_sums_in_float32():
    torch.manual_seed(0)
    net = attrib.Model(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                           torch.nn.Linear(32, 2)).to(torch.bfloat16))
    got = attrib.saliency(net, torch.randn(1, 16, dtype=torch.bfloat16), target=1, smooth=64,
                          smooth_type="vargrad", seed=0)
    assert got.values.dtype == torch.float32 and bool((got.values >= 0).all())


def test_token_type_ids_of_an_encoding_reach_the_model():
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=60)).double().eval()
    enc = {"input_ids": torch.tensor([[5, 17, 23, 9, 41]]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
           "token_type_ids": torch.tensor([[0, 0, 1, 1, 1]])}
    with torch.no_grad():
        want = hf(**enc).logits[0, -1, 7].item()
    got = attrib.integrated_gradients(attrib.LanguageModel(hf), enc, target=7, n_steps=2)
    assert got.info["f_x"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(attrib.InputError, match="'labels' is not a tensor of the ids' shape"):
        attrib.saliency(attrib.LanguageModel(hf), {**enc, "labels": torch.tensor([1])}, target=7)


def test_attribution_patching_of_a_partly_frozen_model():
    model = attrib.LanguageModel(tiny_hf("llama"))
    free = attrib.attribution_patching(model, CLEAN, CORRUPTED, target=7)
    for name, p in model.module.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    frozen = attrib.attribution_patching(model, CLEAN, CORRUPTED, target=7)
    for c in free.scores:
        torch.testing.assert_close(frozen.scores[c], free.scores[c], rtol=1e-12, atol=1e-14)


def test_trace_of_a_left_padded_encoding_numbers_positions():
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    enc = {"input_ids": torch.tensor([[0, 0, 3, 14], [5, 6, 3, 14]]), "attention_mask": torch.tensor([[0, 0, 1, 1],
                                                                                                      [1, 1, 1, 1]])}
    with torch.no_grad(), model.trace(enc):
        padded = model.output.logits[0, -1].save()
    with torch.no_grad():
        alone = model.module(torch.tensor([[3, 14]])).logits[0, -1]
    torch.testing.assert_close(padded, alone, rtol=1e-9, atol=1e-12)


def test_a_flattening_mlp_in_a_component_map():
    torch.manual_seed(0)
    hf = transformers.OPTForCausalLM(transformers.OPTConfig(
        num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4, vocab_size=60,
        max_position_embeddings=64, word_embed_proj_dim=32)).double().eval()
    model = attrib.LanguageModel(hf)
    cmap = {"layers": "model.decoder.layers", "attn": "self_attn", "mlp": "fc2", "o_proj": "self_attn.out_proj"}
    built_in = attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components="mlp")
    mapped = attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components="mlp",
                                        component_map={**cmap, "flat_mlp": True})
    torch.testing.assert_close(mapped.scores["mlp"], built_in.scores["mlp"], rtol=0, atol=0)
    for method in (attrib.activation_patching, attrib.attribution_patching):
        with pytest.raises(attrib.MethodError, match="flattens the positions"):
            method(model, CLEAN, CORRUPTED, target=7, components="mlp", component_map=cmap)


def test_mixtral_of_transformers_4_names_its_moe_block_differently():
    layer = torch.nn.Module()
    layer.self_attn = torch.nn.Module()
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        setattr(layer.self_attn, name, torch.nn.Linear(8, 8))
    layer.block_sparse_moe = torch.nn.Linear(8, 8)
    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.layers = torch.nn.ModuleList([layer])
    root.config = types.SimpleNamespace(model_type="mixtral", num_attention_heads=2, num_key_value_heads=2)
    assert layout_of(root).mlp == "block_sparse_moe"


def test_what_cannot_be_honoured_is_refused():
    net = attrib.Model(torch.nn.Linear(3, 2).double())
    x = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(attrib.TargetError, match="not both"):
        attrib.saliency(net, x, target=1, metric=lambda o: o[:, 0])
    with pytest.raises(attrib.TargetError, match="inside the metric"):
        attrib.integrated_gradients(net, x, metric=lambda o: o[:, 0], score="prob")
    with pytest.raises(attrib.InputError, match=r"pass x\[None\]"):
        attrib.saliency(net, torch.ones(3, dtype=torch.float64), target=0)
    with pytest.raises(attrib.MethodError, match="attribute to a site before it"):
        attrib.integrated_gradients(attrib.LanguageModel(tiny_hf("gpt2")), CLEAN, target=7, layer="lm_head")


def test_a_chosen_batch_size_is_kept_on_out_of_memory():
    model = attrib.LanguageModel(tiny_hf("gpt2"))

    def oom(module, args, output):
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. simulated")

    handle = model.module.transformer.h[0].register_forward_hook(oom)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components="resid", batch_size=4)
        halved = attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components="resid")
        assert halved.info["batch_size"] == 2
    finally:
        handle.remove()
