"""LanguageModel.call_kwargs: the kept logits' positions as a tensor of indices, where the model takes one."""

from __future__ import annotations

from typing import Any

import torch
import transformers

import attrib
from attrib.models.language import keeps_by_index


def _llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).double().eval()


class _IntOnly(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        return input_ids


def test_the_kept_positions_go_as_indices_where_the_model_takes_them():
    hf = _llama()
    model = attrib.LanguageModel(hf)
    ids = torch.randint(1, 97, (3, 7))
    kwargs = model.call_kwargs(ids, torch.ones_like(ids), keep=2)
    assert keeps_by_index(hf) and not keeps_by_index(_IntOnly())
    assert torch.equal(kwargs["logits_to_keep"], torch.tensor([5, 6]))
    assert model.call_kwargs(ids, keep=0)["logits_to_keep"] == 0            # 0: every position, as given
    assert model.call_kwargs(ids, keep=9)["logits_to_keep"] == 9            # more than the prompt: as given


def test_the_head_gets_a_contiguous_block_and_the_same_logits_and_gradients():
    """The int's slice of the last position is a strided view, which torch's matmul runs as one product per row
    when it requires grad; the indices gather a contiguous block. Same logits and input gradients either way."""
    hf = _llama()
    model = attrib.LanguageModel(hf)
    ids = torch.randint(1, 97, (4, 9))
    seen: list[bool] = []
    handle = hf.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    try:
        results = []
        for keep in (model.call_kwargs(ids, keep=1)["logits_to_keep"], 1):
            x = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = hf(inputs_embeds=x, logits_to_keep=keep).logits
            (grad,) = torch.autograd.grad(logits[:, -1, 5].sum(), x)
            results.append((logits, grad))
    finally:
        handle.remove()
    assert seen == [True, False]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-14, atol=1e-16)


class _KeepingBart(transformers.BartForConditionalGeneration):
    """A BART whose forward also takes logits_to_keep as positions (as its causal-LM sibling does): of the
    decoder's inputs."""

    def forward(self, *args: Any, logits_to_keep: "int | torch.Tensor" = 0, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        if isinstance(logits_to_keep, torch.Tensor) or logits_to_keep:
            positions = (logits_to_keep if isinstance(logits_to_keep, torch.Tensor) else
                         torch.arange(out.logits.shape[1] - logits_to_keep, out.logits.shape[1]))
            out.logits = out.logits[:, positions]
        return out


def test_an_encoder_decoder_keeps_its_decoder_positions_as_an_int():
    """The encoder's ids cannot give the decoder's positions: the int goes as it is, and the model's logits are
    those of the decoder's last position."""
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=97, d_model=32, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                  decoder_ffn_dim=64, max_position_embeddings=64, decoder_start_token_id=2)
    hf = _KeepingBart(cfg).double().eval()
    model = attrib.LanguageModel(hf)
    ids = torch.randint(3, 97, (2, 7))
    decoder = torch.tensor([[2, 5, 9], [2, 6, 8]])
    kwargs = model.call_kwargs(ids, torch.ones_like(ids), keep=1)
    assert keeps_by_index(hf) and kwargs["logits_to_keep"] == 1
    with torch.no_grad():
        kept = hf(**kwargs, decoder_input_ids=decoder).logits
        every = hf(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=decoder).logits
    assert kept.shape == (2, 1, 97)
    torch.testing.assert_close(kept[:, 0], every[:, -1], rtol=0, atol=0)


def test_a_dispatched_model_keeps_the_int(monkeypatch):
    """A model dispatched over devices slices on its last one, where an index made on the input device is not:
    the int goes as it is."""
    from attrib.models import language

    hf = _llama()
    model = attrib.LanguageModel(hf)
    ids = torch.randint(1, 97, (2, 5))
    assert isinstance(model.call_kwargs(ids, keep=1)["logits_to_keep"], torch.Tensor)
    monkeypatch.setattr(language, "is_dispatched", lambda module: module is hf)
    assert model.call_kwargs(ids, keep=1)["logits_to_keep"] == 1


def test_the_signature_cache_keeps_no_module_alive():
    """A forward bound on one instance (a function that refers to the module) is read each time, not cached."""
    import gc
    import types
    import weakref

    from attrib.models.language import accepts

    module = torch.nn.Linear(2, 2)

    def forward(self: torch.nn.Module, x: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        return self.weight @ x

    forward.owner = module                           # the function holds the module
    module.forward = types.MethodType(forward, module)
    assert accepts(module, "logits_to_keep") and accepts(torch.nn.Linear(2, 2), "input")
    ref = weakref.ref(module)
    del module, forward
    gc.collect()
    assert ref() is None


def test_left_padded_rows_of_a_fairseq_position_table_equal_each_row_alone():
    """RoBERTa-style position tables keep a row for padding and count real positions from padding_idx + 1; the
    position ids of a left-padded batch start there too (0-based ids gave a padded row other logits than alone)."""
    torch.manual_seed(0)
    config = transformers.RobertaConfig(is_decoder=True, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=4, vocab_size=60, max_position_embeddings=70,
                                        pad_token_id=0)
    model = attrib.LanguageModel(transformers.RobertaForCausalLM(config).double().eval())
    assert model.position_offset == 1
    rows = [[3, 14, 15, 9, 26, 5], [12, 13, 26, 5]]
    with torch.no_grad(), model.trace(rows):
        batch = model.output.logits[:, -1].save()
    for i, row in enumerate(rows):
        with torch.no_grad(), model.trace(torch.tensor([row])):
            alone = model.output.logits[:, -1].save()
        assert torch.allclose(batch[i], alone[0], atol=1e-12), i
    gpt2 = attrib.LanguageModel(transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2,
                                                                                     vocab_size=20)))
    assert gpt2.position_offset == 0
