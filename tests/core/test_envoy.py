"""Envoys mirror the module tree; LanguageModel prepares prompts."""

from __future__ import annotations

import pytest
import torch

import attrib


def test_attribute_access_mirrors_the_tree(gpt2):
    model, hf, ids = gpt2
    assert model.transformer.h[-1].module is hf.transformer.h[1]
    assert model.transformer.h[-1].path == "model.transformer.h[1]"
    assert [e.module for e in model.transformer.h[0:2]] == list(hf.transformer.h)
    assert [e.module for e in model.transformer.h] == list(hf.transformer.h)
    assert len(model.transformer.h) == 2
    assert model.lm_head.weight is hf.lm_head.weight          # non-module attributes are the module's
    assert model.config is hf.config
    assert model.transformer.h[0] is model.transformer.h[0]    # envoys are cached
    assert repr(model.transformer.h[0].attn) == "Envoy(model.transformer.h[0].attn: GPT2Attention)"


def test_the_wrapper_is_not_a_copy(gpt2):
    model, hf, ids = gpt2
    assert model.module is hf and model.device == torch.device("cpu") and model.dtype == torch.float64


def test_submodule_shadowed_by_a_value_name():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.output(x) * 2

    model = attrib.Model(Block())
    with model.trace(torch.ones(1, 2)):
        inner = model.submodule("output").output
        outer = model.output
    torch.testing.assert_close(outer, inner * 2)


def test_envoy_attributes_cannot_be_set(gpt2):
    model, hf, ids = gpt2
    with pytest.raises(attrib.AttribError, match="cannot be set through attrib"):
        model.transformer.h[0].weight = None


def test_language_model_left_pads_a_batch(demo):
    enc = demo.tokenize(["The capital of France is", "Hi"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape[0] == 2 and mask[1, 0] == 0 and mask[1, -1] == 1 and mask[0].all()
    with demo.trace(["The capital of France is", "Hi"]):
        logits = demo.output.logits.save()
    with demo.trace("The capital of France is"):
        single = demo.output.logits.save()
    torch.testing.assert_close(logits[0, -1], single[0, -1], rtol=1e-4, atol=1e-4)
    paris = demo.tokenizer(" Paris")["input_ids"][0]
    assert int(single[0, -1].argmax()) == paris


def test_language_model_accepts_encodings_and_ids(demo):
    enc = demo.tokenize("The capital of France is")
    with demo.trace(enc):
        a = demo.output.logits.save()
    with demo.trace(enc["input_ids"][0]):
        b = demo.output.logits.save()
    torch.testing.assert_close(a, b)


def test_model_passes_args_through():
    net = torch.nn.Bilinear(2, 3, 1)
    model = attrib.Model(net)
    x, y = torch.ones(1, 2), torch.ones(1, 3)
    with model.trace(x, input2=y):
        args, kwargs = model.inputs
        out = model.output.save()
    assert args[0] is x and kwargs["input2"] is y
    torch.testing.assert_close(out, net(x, y))


test_language_model_left_pads_a_batch = pytest.mark.slow(test_language_model_left_pads_a_batch)
test_language_model_accepts_encodings_and_ids = pytest.mark.slow(test_language_model_accepts_encodings_and_ids)
