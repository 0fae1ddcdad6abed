"""Every family of the layout registry, on a tiny random config built offline, in float64: IG equals Captum's
LayerIntegratedGradients; every site reads what a plain hook sees and writes what a plain hook would; head
outputs sum to the attention output (before its bias); patching a prompt into itself changes nothing."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers

import attrib
from attrib.models.sites import first_tensor, head_outputs, replace_first, site

logging.getLogger("transformers").setLevel(logging.ERROR)

SMALL = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=60, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _causal(config):
    return transformers.AutoModelForCausalLM.from_config(config)


_BART = dict(encoder_layers=2, decoder_layers=1, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
             encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=60, max_position_embeddings=64,
             decoder_start_token_id=0, pad_token_id=1, bos_token_id=2, eos_token_id=3,
             init_std=0.3)      # (0.02: attention so flat that a change of the queries does not reach the output)

FAMILIES = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=60, n_positions=64, bos_token_id=1, eos_token_id=2)),
    "gpt_neox": lambda: _causal(transformers.GPTNeoXConfig(**{**SMALL, "num_key_value_heads": 4})),
    "llama": lambda: _causal(transformers.LlamaConfig(**SMALL)),
    "mistral": lambda: _causal(transformers.MistralConfig(**SMALL)),
    "mixtral": lambda: _causal(transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2,
                                                          experts_implementation="eager")),
    "qwen2": lambda: _causal(transformers.Qwen2Config(**SMALL)),
    "qwen3": lambda: _causal(transformers.Qwen3Config(**SMALL, head_dim=8)),
    "gemma": lambda: _causal(transformers.GemmaConfig(**SMALL, head_dim=8)),
    "gemma2": lambda: _causal(transformers.Gemma2Config(**SMALL, head_dim=8)),
    "gemma3": lambda: _causal(transformers.Gemma3TextConfig(**SMALL, head_dim=8)),
    "phi3": lambda: _causal(transformers.Phi3Config(**SMALL)),
    "opt": lambda: _causal(transformers.OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=64, num_attention_heads=4,
                                                  vocab_size=60, max_position_embeddings=64, word_embed_proj_dim=32,
                                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "bert": lambda: transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=60,
        max_position_embeddings=64, pad_token_id=0)),
    "t5": lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        num_layers=2, num_decoder_layers=2, d_model=32, d_ff=64, num_heads=4, d_kv=8, vocab_size=60,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)),
}
# BART-style encoder-decoders (the encoder's layers; the structural fallback had found OPT's decoder in them): the
# layout tests here run on them too; the methods' tests import FAMILIES, whose methods they do not all support
BART_FAMILIES = {
    "bart": lambda: transformers.BartForConditionalGeneration(transformers.BartConfig(**_BART)),
    "marian": lambda: transformers.MarianMTModel(transformers.MarianConfig(**_BART)),
}
LAYOUT_FAMILIES = {**FAMILIES, **BART_FAMILIES}
SEQ2SEQ = ("t5", "bart", "marian")
IDS = torch.tensor([[5, 17, 23, 9, 41, 12]])
TARGET = 7
SITES = ("resid_pre.0", "q.0", "k.0", "v.0", "z.0", "attn_out.0", "mlp_out.0", "resid_post.0",
         "resid_pre.1", "q.1", "z.1", "attn_out.1", "mlp_out.1", "resid_post.1")


@pytest.fixture(params=sorted(LAYOUT_FAMILIES))
def family(request):
    torch.manual_seed(0)
    hf = LAYOUT_FAMILIES[request.param]().double().eval()
    return request.param, hf, attrib.LanguageModel(hf)


def forward_fn(hf, name):
    if name in SEQ2SEQ:
        dec = torch.zeros(1, 1, dtype=torch.long)
        return lambda ids: hf(input_ids=ids, decoder_input_ids=dec.expand(ids.shape[0], 1)).logits[:, -1, TARGET]
    return lambda ids: hf(input_ids=ids).logits[:, -1, TARGET]


def test_the_family_is_found_by_its_model_type(family):
    name, hf, model = family
    layout = attrib.models.layout_of(hf)
    assert layout.family == ("gemma3_text" if name == "gemma3" else name)
    assert layout.n_heads == 4


def test_ig_equals_captum_layer_ig_on_the_embeddings(family):
    from captum.attr import LayerIntegratedGradients   # (here: other test files import this one's models)

    name, hf, model = family
    embedding = hf.get_submodule(site(model, "embed").path)
    ref = LayerIntegratedGradients(forward_fn(hf, name), embedding).attribute(
        IDS, baselines=torch.full_like(IDS, 3), n_steps=8)
    got = attrib.integrated_gradients(model, IDS, target=TARGET, baseline=3, n_steps=8)
    torch.testing.assert_close(got.values, ref[0], rtol=1e-5, atol=1e-8)
    assert got.tokens == [str(i) for i in IDS[0].tolist()]


def _reference(hf, where, change):
    """A plain forward (or pre-) hook on the site's module applying ``change`` to the site's part; it also
    records the site's value."""
    seen = {}
    module = hf.get_submodule(where.path)

    def take(full):             # outside a trace: a flattening module's rows are this one prompt's positions
        return full.view(1, -1, full.shape[-1]) if where.flat else where.take(full)

    def new_full(full):
        seen["value"] = take(full).detach().clone()
        if change is None:
            return full
        return change(take(full)).view(full.shape) if where.flat else where.put(full, change(take(full)))

    if where.kind == "output":
        return seen, module.register_forward_hook(lambda m, a, out: replace_first(out, new_full(first_tensor(out))))

    def pre(m, args, kwargs):
        if args:
            return (new_full(args[0]), *args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: new_full(kwargs[key])}

    return seen, module.register_forward_pre_hook(pre, with_kwargs=True)


def run_hooked(hf, name, where, change):
    """(the target logit of a plain forward with the reference hook in place, the site's value it saw)"""
    seen, handle = _reference(hf, where, change)
    try:
        with torch.no_grad():
            return forward_fn(hf, name)(IDS), seen["value"]
    finally:
        handle.remove()


def trace_args(name):
    return ((), {"input_ids": IDS, "decoder_input_ids": torch.zeros(1, 1, dtype=torch.long)}) \
        if name in SEQ2SEQ else ((IDS,), {})


@pytest.mark.parametrize("name_of_site", SITES)
def test_every_site_reads_and_writes_as_a_plain_hook(family, name_of_site):
    name, hf, model = family
    where = site(model, name_of_site)

    def change(v):     # a fixed random perturbation (tiny random weights make a scaling of keys invisible)
        noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=v.dtype)
        return v * 0.5 + noise

    expected, _ = run_hooked(hf, name, where, change)
    untouched, plain_value = run_hooked(hf, name, where, None)
    args, kwargs = trace_args(name)
    with torch.no_grad(), model.trace(*args, **kwargs):
        value = where.read(model).clone().save()
        where.write(model, change(where.read(model)))
        logits = model.output.logits.save()
    torch.testing.assert_close(value, plain_value, rtol=0, atol=0)
    torch.testing.assert_close(logits[:, -1, TARGET], expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(expected, untouched)          # the change reaches the output


@pytest.mark.parametrize("layer", [0, 1])
def test_head_outputs_sum_to_the_attention_output(family, layer):
    name, hf, model = family
    z_site, attn = site(model, f"z.{layer}"), site(model, f"attn_out.{layer}")
    args, kwargs = trace_args(name)
    with torch.no_grad(), model.trace(*args, **kwargs):
        z = z_site.read(model).save()
        out = attn.read(model).save()
    bias = getattr(hf.get_submodule(z_site.path), "bias", None)
    heads = head_outputs(model, z_site, z)                 # (1, T, H, hidden)
    assert heads.shape[-2] == 4
    total = heads.sum(-2) + (0 if bias is None else bias)
    torch.testing.assert_close(total, out, rtol=1e-10, atol=1e-10)


def test_patching_a_prompt_into_itself_changes_nothing(family):
    name, hf, model = family
    exact = attrib.activation_patching(model, IDS, IDS, target=TARGET)
    approx = attrib.attribution_patching(model, IDS, IDS, target=TARGET)
    for result in (exact, approx):
        assert set(result.scores) == {"resid", "attn", "mlp", "heads"}
        for scores in result.scores.values():     # batched rows round differently from one row: 1e-12
            assert scores.abs().max() < 1e-12
    assert exact.scores["heads"].shape == (2, 4, IDS.shape[1])


def test_saliency_of_an_encoder_decoder_is_the_gradient_at_the_encoders_embeddings():
    torch.manual_seed(0)
    hf = FAMILIES["t5"]().double().eval()
    model = attrib.LanguageModel(hf)
    embedding = hf.get_submodule(site(model, "embed").path)
    x = embedding(IDS).detach().requires_grad_(True)
    dec = torch.zeros(1, 1, dtype=torch.long)
    (grad,) = torch.autograd.grad(hf(inputs_embeds=x, decoder_input_ids=dec).logits[0, -1, TARGET], x)
    got = attrib.saliency(model, IDS, target=TARGET)
    torch.testing.assert_close(got.values, grad[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.scores, grad[0].norm(dim=-1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["bart", "marian"])
def test_a_bart_style_model_attributes_to_its_encoders_embedding(name):
    """The prompt's embedding is the encoder's (the decoder's, which the OPT layout named, sees one start token)."""
    torch.manual_seed(0)
    hf = BART_FAMILIES[name]().double().eval()
    model = attrib.LanguageModel(hf)
    assert site(model, "embed").path == "model.encoder.embed_tokens"
    got = attrib.integrated_gradients(model, IDS, target=TARGET, n_steps=64)
    assert got.values.shape == (IDS.shape[1], 32)
    assert abs(float(got.delta)) <= 1e-6 * max(1e-3, abs(got.info["f_x"] - got.info["f_baseline"]))


def test_an_unknown_encoder_decoder_never_gets_a_decoder_only_layout():
    """The structural fallback skips layouts whose embedding is a decoder's (OPT's fits BART's decoder too)."""
    torch.manual_seed(0)
    hf = BART_FAMILIES["bart"]()
    hf.config.model_type = "some_new_seq2seq"
    layout = attrib.models.layout_of(hf)
    assert layout.family == "bart" and layout.embed == "model.encoder.embed_tokens"
