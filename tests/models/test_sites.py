"""Site names: resolution, errors that list the names, execution order, and IG's layer= by site name."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerIntegratedGradients

import attrib
from attrib.models.sites import schedule, site
from tests.conftest import tiny_hf

IDS = torch.tensor([[3, 14, 15, 9, 26, 5]])


@pytest.fixture
def llama():
    return attrib.LanguageModel(tiny_hf("llama"))


def test_names_resolve_to_modules(llama):
    assert site(llama, "resid_post.-1").path == "model.layers.1"
    assert (site(llama, "resid_pre.0").kind, site(llama, "resid_pre.0").path) == ("input", "model.layers.0")
    assert site(llama, "z.1").path == "model.layers.1.self_attn.o_proj" and site(llama, "z.1").heads == 4
    assert site(llama, "k.0").heads == 2                               # grouped-query attention: 2 kv heads
    assert site(llama, "embed").path == "model.embed_tokens"
    assert site(llama, "model.layers.0.mlp").path == "model.layers.0.mlp"
    assert site(llama, llama.model.layers[0].mlp).path == "model.layers.0.mlp"


def test_bad_names_say_what_exists(llama):
    with pytest.raises(attrib.LayoutError, match="outside the model's 2 layers"):
        site(llama, "resid_post.5")
    with pytest.raises(attrib.LayoutError, match="needs a layer index"):
        site(llama, "resid_post")
    with pytest.raises(attrib.LayoutError, match="neither a site name .*did you mean 'layers'"):
        site(llama, "model.layerz.0")


def test_schedule_is_execution_order(llama):
    names = ["resid_post.1", "mlp_out.0", "z.0", "q.1", "resid_pre.0", "attn_out.0"]
    assert [s.name for s in schedule(site(llama, n) for n in names)] == \
        ["resid_pre.0", "z.0", "attn_out.0", "mlp_out.0", "q.1", "resid_post.1"]


@pytest.mark.parametrize("name", ["resid_post.0", "mlp_out.1", "q.0"])
def test_layer_ig_by_site_name_equals_captum(llama, name):
    hf = llama.module
    module = hf.get_submodule(site(llama, name).path)
    ref = LayerIntegratedGradients(lambda ids: hf(input_ids=ids).logits[:, -1, 11], module).attribute(
        IDS, baselines=torch.full_like(IDS, 2), n_steps=6)
    got = attrib.integrated_gradients(llama, IDS, target=11, baseline=2, n_steps=6, layer=name)
    values = got.values.flatten(-2) if name.startswith("q") else got.values     # heads merged, as Captum sees it
    torch.testing.assert_close(values, ref[0], rtol=1e-5, atol=1e-8)
    assert got.info["layer"] == name
