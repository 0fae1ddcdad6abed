"""Bad arguments to attribution_patching and activation_patching (the same checks in both): each case raises
one clear AttribError subclass naming the argument, or gives a result equal to an independent computation
with plain forward hooks, and leaves every model clean and computing bit-identical logits
(tests/reliability/badcases.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attrib
from attrib import InputError, LayoutError, MethodError, TargetError

from . import badcases
from .badcases import CORRUPT, IDS, Case, close, correct, error, ids_of, run_case, v

_one_thread = badcases.one_thread

METHODS = {"atp": attrib.attribution_patching, "acp": attrib.activation_patching}


def patch(method: str, model_name: str = "gpt2", clean=IDS, corrupted=CORRUPT, **kwargs):
    kwargs.setdefault("target", 3 if model_name in ("gpt2", "llama") else 0)
    fn = METHODS[method]

    def call(m):
        c = clean(m) if callable(clean) else clean
        d = corrupted(m) if callable(corrupted) else corrupted
        return fn(getattr(m, model_name), c, d, **kwargs)
    return call


def metric(logits):
    return logits[:, -1, 0]


def both(name: str, cls, match: str, **kwargs) -> list[Case]:
    """The same bad argument to attribution patching and to activation patching."""
    max_len = kwargs.pop("max_len", 400)
    return [error(f"{method} {name}", cls, match, patch(method, **kwargs), max_len=max_len) for method in METHODS]


# -- independent computations (plain forward hooks, no attrib) ------------------------------------------------
def _first(out):
    return out[0] if isinstance(out, tuple) else out


def layer_outputs(hf, layers, ids, replace=None):
    """(logits, [each layer's output]) of a plain run; ``replace=(layer, position, value)`` patches one output."""
    store = []

    def hook(module, args, out, i):
        h = _first(out)
        if replace is not None and replace[0] == i:
            h = h.clone()
            h[:, replace[1]] = replace[2]
        store.append(h)
        return h if not isinstance(out, tuple) else (h, *out[1:])

    handles = [layer.register_forward_hook(lambda mod, a, o, i=i: hook(mod, a, o, i)) for i, layer in enumerate(layers)]
    try:
        logits = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    return logits, store


def check_activation_resid(model_name, positions, target=3):
    """Denoising: the corrupted run with one layer output at one position taken from the clean run."""
    def check(m, got):
        hf = getattr(m, model_name).module
        layers = hf.transformer.h if model_name == "gpt2" else hf.model.layers
        with torch.no_grad():
            _, clean = layer_outputs(hf, layers, IDS)
            base = float(layer_outputs(hf, layers, CORRUPT)[0][0, -1, target])
            want = torch.tensor([[float(layer_outputs(hf, layers, CORRUPT, (i, p, clean[i][:, p]))[0][0, -1, target])
                                  - base for p in positions] for i in range(len(layers))], dtype=torch.float64)
        assert got.positions == positions
        close(got.scores["resid"], want)
    return check


def check_attribution_resid_noise(m, got):
    """Noising: (a_corrupted − a_clean) · ∂metric/∂a at the clean run, summed over the hidden dimension."""
    hf = m.gpt2.module
    layers = hf.transformer.h
    with torch.no_grad():
        _, corrupt = layer_outputs(hf, layers, CORRUPT)
    logits, clean = layer_outputs(hf, layers, IDS)
    grads = torch.autograd.grad(logits[0, -1, 3], clean)
    want = torch.stack([((c - a) * g)[0].sum(-1) for c, a, g in zip(corrupt, clean, grads)])
    close(got.scores["resid"], want.detach()[:, [1, 5]])


CASES: list[Case] = [
    *[error(f"{k} of an unwrapped module", MethodError, r"model must be an attrib\.Model.*got GPT2LMHeadModel",
            lambda m, k=k: METHODS[k](m.gpt2.module, IDS, CORRUPT, target=3)) for k in METHODS],
    *both("prompts of different lengths", MethodError, r"clean and corrupted must have the same number of tokens.*"
          r"clean has 6 .*corrupted has 5", corrupted=CORRUPT[:, :5]),
    *both("texts of different lengths", MethodError, r"same number of tokens.*clean has 3 \[' w1', ' w2', ' w3'\], "
          r"corrupted has 2", clean="w1 w2 w3", corrupted="w1 w2"),
    *both("llama prompts of different lengths", MethodError, r"same number of tokens.*clean has 4",
          model_name="llama", clean=IDS[:, :4]),
    *both("unknown component", MethodError, r"unknown component 'foo'; choose from 'resid', 'attn', 'mlp', 'heads'",
          components="foo"),
    *both("misspelled component in a list", MethodError, r"unknown component 'head'", components=["resid", "head"]),
    *both("no components", MethodError, r"components is empty", components=[]),
    *[case for k in (None, 3, [3], [["resid"]]) for case in both(
        f"components={k!r}", MethodError, rf"components={v(k)} is not a component name or a list of them; pass e\.g\. "
        r"components=\('resid', 'heads'\)", components=k)],
    *both("unknown direction", MethodError, r"direction='forward' is not one of 'denoise'.*'noise'",
          direction="forward"),
    *both("position past the end", MethodError, r"position 10 is outside the prompt of 6 tokens", positions=10),
    *both("position before the start", MethodError, r"position -7 is outside the prompt of 6 tokens", positions=[-7]),
    *both("llama position past the end", MethodError, r"position 6 is outside the prompt of 6 tokens",
          model_name="llama", positions=[0, 6]),
    *both("no positions", MethodError, r"positions is empty; pass None", positions=[]),
    *both("positions of an object", MethodError, r"positions must be an int, a list of ints or None.*got <object",
          positions=object()),
    *both("a batch of clean prompts, one corrupted", MethodError, r"clean has 2 prompts and corrupted has 1 prompt: "
          r"patching needs one corrupted prompt per clean prompt", clean=torch.cat([IDS, IDS])),
    *both("one clean prompt, a batch of corrupted", MethodError, r"clean has 1 prompt and corrupted has 2 prompts",
          corrupted=torch.cat([CORRUPT, CORRUPT])),
    *both("three clean texts, two corrupted", MethodError, r"clean has 3 prompts and corrupted has 2 prompts",
          clean=["w3 w14 w15 w9 w26 w5"] * 3, corrupted=["w3 w14 w7 w9 w26 w5"] * 2),
    *both("pairs where the second differs in length", MethodError, r"clean and corrupted of pair 1 must have the same "
          r"number of tokens.*clean has 6 .*corrupted has 5", clean=[IDS[0].tolist(), IDS[0].tolist()],
          corrupted=[CORRUPT[0].tolist(), CORRUPT[0, :5].tolist()]),
    *both("component_map of a string", LayoutError, r"component_map='transformer\.h' is not a dict; pass one that "
          r"maps 'layers'", component_map="transformer.h"),
    *both("component_map of a list", LayoutError, r"component_map=\['layers'\] is not a dict",
          component_map=["layers"]),
    *both("component_map flat_mlp of a string", LayoutError, r"component_map\['flat_mlp'\]='no' must be True or False",
          component_map={"layers": "transformer.h", "attn": "attn", "mlp": "mlp", "flat_mlp": "no"}),
    *both("clean id outside the vocabulary", InputError, r"token id 99 at position 2 of clean \(token ids of shape "
          r"\(1, 6\)\) is outside the vocabulary of 50 tokens", clean=torch.tensor([[3, 14, 99, 9, 26, 5]])),
    *both("corrupted id outside the vocabulary", InputError, r"token id -3 at position 0 of corrupted",
          corrupted=torch.tensor([[-3, 14, 7, 9, 26, 5]])),
    *both("corrupted list mixing ids and text", InputError, r"element 1 of corrupted \[3, 'w14'\] is 'w14' "
          r"\(a string\)", corrupted=[3, "w14"]),
    *both("unknown component_map key", LayoutError, r"component_map needs 'layers'.*got unknown key\(s\) 'foo'",
          component_map={"foo": 1}),
    *both("component_map without layers", LayoutError, r"component_map needs 'layers'",
          component_map={"attn": "attn"}),
    *both("component_map of missing layers", LayoutError, r"component_map\['layers'\]='transformer\.hh' is not a "
          r"non-empty ModuleList of GPT2LMHeadModel", component_map={"layers": "transformer.hh"}),
    *both("component_map of a missing attn", LayoutError, r"component_map\['attn'\]='atn' is not a submodule of "
          r"transformer\.h\[0\]", component_map={"layers": "transformer.h", "attn": "atn", "mlp": "mlp"}),
    *both("heads without o_proj", LayoutError, r"site 'z\.0' needs component_map\['o_proj'\]", components="heads",
          component_map={"layers": "transformer.h", "attn": "attn", "mlp": "mlp"}),
    *both("a model without layout", LayoutError, r"no known layout fits Sequential \(model_type None.*\); pass "
          r"component_map=", model_name="mlp", clean=lambda m: m.x[:1], corrupted=lambda m: m.x[1:]),
    *both("target id 99", TargetError, r"target has id 99, outside the model's 50 outputs", target=99),
    *both("llama target text without tokens", TargetError, r"target='' tokenizes to no tokens", model_name="llama",
          target=""),
    *both("batch_size 0", MethodError, rf"batch_size must be a positive int or None.*got {v(0)}", batch_size=0),
    *both("batch_size 1.5", MethodError, rf"batch_size must be a positive int or None.*got {v(1.5)}", batch_size=1.5),
    *both("metric with a contrast", TargetError, r"contrast= is scored by attrib; with metric=", target=None,
          metric=metric, contrast=3),
    *both("corrupted None", InputError, r"a language model takes text.*got NoneType", corrupted=None),
    *both("unknown score", TargetError, r"score='p' is not one of logit, logprob, prob", score="p"),
    *both("contrast of another length", TargetError, r"contrast=\[4, 5\] has 2 tokens", contrast=[4, 5]),
    # correct results
    correct("acp positions of numpy and tensor ints",
            patch("acp", components="resid", positions=[np.int64(1), torch.tensor(-1)]),
            check_activation_resid("gpt2", [1, 5])),
    correct("acp llama last position", patch("acp", model_name="llama", components="resid", positions=-1),
            check_activation_resid("llama", [5])),
    correct("acp in batches of 1", patch("acp", components="resid", batch_size=1),
            check_activation_resid("gpt2", list(range(6)))),
    correct("acp clean as a list of one prompt",
            patch("acp", components="resid", positions=[1, -1], clean=["w3 w14 w15 w9 w26 w5"],
                  corrupted=["w3 w14 w7 w9 w26 w5"]),
            check_activation_resid("gpt2", [1, 5])),
    correct("atp list of one prompt and numpy ids", patch("atp", components=["resid"], direction="noise",
                                                          positions=[1, -1], clean=["w3 w14 w15 w9 w26 w5"],
                                                          corrupted=CORRUPT.numpy()),
            check_attribution_resid_noise),
    correct("atp noise direction", patch("atp", components=("resid",), direction="noise", positions=[1, -1]),
            check_attribution_resid_noise),
]


@pytest.mark.parametrize("case", CASES, ids=ids_of(CASES))
def test_bad_patching_argument(case):
    run_case(case)
