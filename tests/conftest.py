"""Shared fixtures: tiny seeded models (float64), the demo model, and the leak check."""

from __future__ import annotations

import contextlib
import signal
import gc
import logging

import greenlet
import pytest
import torch

import attrib
from attrib.core.current import local

logging.getLogger("transformers").setLevel(logging.ERROR)

ARCHS = ("gpt2", "llama", "neox")


# scripts that run in other environments (an oracle library's own venv), not test modules
collect_ignore = ["oracles/transformerlens_eap.py"]

def tiny_hf(arch: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A 2-layer random causal LM of one of three layouts, seeded, in eval mode."""
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                              LlamaForCausalLM)

    torch.manual_seed(seed)
    if arch == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32,
                                        bos_token_id=0, eos_token_id=0))
    elif arch == "llama":
        hf = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                                          max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
                                          pad_token_id=0))
    elif arch == "neox":
        hf = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                              num_attention_heads=4, vocab_size=50, max_position_embeddings=32,
                                              bos_token_id=0, eos_token_id=0))
    else:
        raise ValueError(arch)
    return hf.to(dtype).eval()


def layers_of(hf: torch.nn.Module) -> torch.nn.ModuleList:
    for path in ("transformer.h", "model.layers", "gpt_neox.layers"):
        obj = hf
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AttributeError("no layers")


def layers_path(arch: str) -> str:
    return {"gpt2": "transformer.h", "llama": "model.layers", "neox": "gpt_neox.layers"}[arch]


def attn_name(arch: str) -> str:
    return {"gpt2": "attn", "llama": "self_attn", "neox": "attention"}[arch]


def envoy_at(model: attrib.Model, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if part.lstrip("-").isdigit() else getattr(obj, part)
    return obj


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny(arch):
    """(attrib.Model, hf module, token ids) for each architecture."""
    hf = tiny_hf(arch)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    return attrib.Model(hf), hf, ids


@pytest.fixture
def gpt2():
    hf = tiny_hf("gpt2")
    return attrib.Model(hf), hf, torch.tensor([[3, 14, 15, 9, 26, 5]])


@pytest.fixture(scope="session")
def demo():
    return attrib.load_demo_model(device="cpu")


def live_greenlets() -> list:
    import warnings

    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [g for g in gc.get_objects()
                if isinstance(g, greenlet.greenlet) and g.parent is not None and bool(g)]


def hook_counts(module: torch.nn.Module) -> int:
    n = 0
    for m in module.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    return n


class LeakCheck:
    """Snapshot before, compare after: hooks, global hooks, torch.Tensor attributes, greenlets."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.modules = modules
        self.hooks = [hook_counts(m) for m in modules]
        self.tensor_dict = {k: torch.Tensor.__dict__.get(k) for k in ("backward", "save", "grad")}
        self.global_fwd = len(torch.nn.modules.module._global_forward_hooks)
        self.global_pre = len(torch.nn.modules.module._global_forward_pre_hooks)

    def assert_clean(self) -> None:
        assert [hook_counts(m) for m in self.modules] == self.hooks, "module hooks left behind"
        assert {k: torch.Tensor.__dict__.get(k) for k in ("backward", "save", "grad")} == self.tensor_dict, \
            "patched torch.Tensor attribute left behind"
        assert not hasattr(torch.Tensor, "save"), "torch.Tensor.save left behind"
        assert len(torch.nn.modules.module._global_forward_hooks) == self.global_fwd
        assert len(torch.nn.modules.module._global_forward_pre_hooks) == self.global_pre
        assert live_greenlets() == [], "a greenlet is still alive"
        assert local.traces == [] and local.backward is None, "an active trace or context is still registered"


@pytest.fixture
def leakcheck():
    made: list[LeakCheck] = []

    def make(*modules):
        check = LeakCheck(*modules)
        made.append(check)
        return check

    yield make
    for check in made:
        check.assert_clean()


def stacked(results, field: str = "values") -> torch.Tensor:
    """One tensor from a list of per-row results (a plain model's batch gives one result per row)."""
    return torch.stack([getattr(r, field) for r in (results if isinstance(results, list) else [results])])


class WordTokenizer:
    """A tokenizer of words "w0" … "w59" (token id = the number), shaped like a Hugging Face one where attrib
    uses it: ``tok(text)["input_ids"]``, ``add_special_tokens``, ``decode``, ``pad_token`` / ``eos_token_id``."""

    pad_token = None
    pad_token_id = None
    eos_token_id = 2
    padding_side = "right"

    def __call__(self, text: str, add_special_tokens: bool = True, **_) -> dict:
        ids = [int(w[1:]) for w in text.split()]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def decode(self, ids) -> str:
        return " " + " ".join(f"w{int(i)}" for i in (ids if hasattr(ids, "__iter__") else [ids]))


@pytest.fixture
def no_gc():
    """The cycle collector off for the test: only reference counting may free a pass's tensors."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def no_hang(seconds: int = 30):
    """Fail with an AssertionError instead of hanging past ``seconds`` (SIGALRM, main thread only)."""
    def fail(*_):
        raise AssertionError(f"hung for {seconds} s")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
