"""Bad inputs to the core (model construction, traces, envoy paths, reading and writing module values; backward
contexts are in test_bad_backward.py): each case raises one clear AttribError subclass or gives a correct
result, and leaves every model clean and computing bit-identical logits (tests/reliability/badcases.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attrib
from attrib import (AlreadyTracedError, InputError, ModulePathError, NeverRanError, NotInTraceError, OutOfOrderError,
                    ReadOnlyEnvoyError, ReusedBlockError, TraceFailedError)

from . import badcases
from .badcases import IDS, Case, close, correct, error, ids_of, run_case

_one_thread = badcases.one_thread



# -- bodies of traces ----------------------------------------------------------------------------------
def trace(model_name: str, *args, **kwargs):
    """``with model.trace(*args): model.output`` — a plain run of the named model."""
    def call(m):
        model = getattr(m, model_name)
        with model.trace(*args, **kwargs):
            return model.output
    return call


def nested(model_name: str):
    def call(m):
        model = getattr(m, model_name)
        with model.trace(IDS):
            with model.trace(IDS):
                pass
    return call


def _read_outside_invokes(model):
    with model.trace():
        return model.transformer.h[0].output


def reused_trace(m):
    tr = m.gpt2.trace(IDS)
    with tr:
        pass
    with tr:
        pass


def reused_context(m):
    with m.gpt2.trace(IDS):
        logits = m.gpt2.output.logits
        with logits.sum().backward(retain_graph=True) as ctx:
            pass
        with ctx:
            pass


def after_trace(m):
    with m.gpt2.trace(IDS):
        m.gpt2.transformer.h[0].output
    return m.gpt2.transformer.h[0].output


def after_trace_plain(m):
    with m.mlp.trace(m.x):
        m.mlp[0].output
    return m.mlp[0].output


def reads(model_name: str, *paths: str):
    """Read ``paths`` (envoy paths, ``.output`` or ``.input``) in this order in one trace."""
    def call(m):
        model = getattr(m, model_name)
        x = {"gpt2": IDS, "llama": IDS, "mlp": m.x, "cnn": m.img, "skips": m.x, "raises": m.x}[model_name]
        with model.trace(x):
            for path in paths:
                obj = model
                for part in path.split("."):
                    obj = obj[int(part)] if part.lstrip("-").isdigit() else getattr(obj, part)
    return call


def assign_late(m):
    with m.gpt2.trace(IDS):
        h = m.gpt2.transformer.h[0].output
        m.gpt2.transformer.h[1].output
        m.gpt2.transformer.h[0].output = h * 2


def assign_late_plain(m):
    with m.mlp.trace(m.x):
        h = m.mlp[0].output
        m.mlp[2].output
        m.mlp[0].output = h * 0


def set_outside(m):
    m.gpt2.transformer.h[0].output = torch.zeros(1, 6, 32, dtype=torch.float64)


def set_envoy_attribute(m):
    m.gpt2.transformer.h[0].foo = 1


def set_envoy_weight(m):
    m.mlp[0].weight = torch.nn.Parameter(torch.zeros(8, 4, dtype=torch.float64))


def set_inputs(value_of):
    def call(m):
        with m.gpt2.trace(IDS):
            m.gpt2.transformer.h[0].inputs = value_of(m)
    return call


def set_inputs_plain(m):
    with m.mlp.trace(m.x):
        m.mlp[2].inputs = ((m.x,), [1])


def first_read_in_context(m):
    with m.gpt2.trace(IDS):
        logits = m.gpt2.output.logits
        with logits.sum().backward():
            m.gpt2.transformer.h[0].output


def failed_then_read(m):
    marked = m.x.clone()
    with m.raises.trace(marked):
        m.raises[0].output[:] = 13.0         # Raises fails on this input
        try:
            m.raises[2].output
        except ValueError:
            pass                             # the user swallows the model's error and goes on
        m.raises[2].output


# -- correct results -------------------------------------------------------------------------------------
def output_of(hf, module, *args, **kwargs):
    """A module's output in a plain run of ``hf`` (a forward hook, no attrib)."""
    store = []
    handle = module.register_forward_hook(lambda _m, _a, out: store.append(out))
    try:
        hf(*args, **kwargs)
    finally:
        handle.remove()
    return store[0]


def trace_1d_ids(m):
    with m.gpt2.trace(IDS[0]):
        return m.gpt2.output.logits.save()


def negative_index(m):
    with m.gpt2.trace(IDS):
        return m.gpt2.transformer.h[-1].output.save()


def prompt_list(m):
    with m.gpt2.trace(["w3 w14 w15", "w9 w26"]):
        return m.gpt2.output.logits[:, -1].save()


def check_prompt_list(m, got):
    with torch.no_grad():
        want = torch.cat([m.gpt2.module(torch.tensor([[3, 14, 15]])).logits[:, -1],
                          m.gpt2.module(torch.tensor([[9, 26]])).logits[:, -1]])
    close(got, want)


def trace_last(m, inputs):
    with m.gpt2.trace(inputs):
        return m.gpt2.output.logits[:, -1].save()


def zeroed_output(m):
    with m.mlp.trace(m.x):
        m.mlp[0].output = torch.zeros(2, 8, dtype=torch.float64)
        return m.mlp.output.save()


CASES: list[Case] = [
    # construction
    error("Model of a string", InputError, r"torch\.nn\.Module, got str\.", lambda m: attrib.Model("gpt2")),
    error("LanguageModel of an int", InputError, r"torch\.nn\.Module, got int\.", lambda m: attrib.LanguageModel(42)),
    error("Model of a module class", InputError, r"torch\.nn\.Module, got type\.",
          lambda m: attrib.Model(torch.nn.Linear)),
    error("Model of None", InputError, r"torch\.nn\.Module, got NoneType\.", lambda m: attrib.Model(None)),
    error("tokenizer given by name", InputError, r"tokenizer='gpt2' is a name, not a tokenizer; pass the tokenizer "
          r"object \(e\.g\. transformers\.AutoTokenizer\.from_pretrained\('gpt2'\)\), or None",
          lambda m: attrib.LanguageModel(m.gpt2.module, tokenizer="gpt2")),
    error("tokenizer of an int", InputError, r"tokenizer=5 \(int\) is not a tokenizer \(it cannot be called on text\)",
          lambda m: attrib.LanguageModel(m.llama.module, 5)),
    # trace inputs
    error("a read in a trace without inputs, outside every invoke", NotInTraceError, r"transformer\.h\[0\]\.output was "
          r"read in `with model\.trace\(\) as tracer:` outside every invoke", lambda m: _read_outside_invokes(m.gpt2)),
    error("text to a plain model", InputError, r"text prompt \('hello'\).*attrib\.Model\(Sequential\).*no tokenizer",
          trace("mlp", "hello")),
    error("texts to a plain model", InputError, r"text prompt \(\['a', 'b'\]\).*no tokenizer",
          trace("mlp", ["a", "b"])),
    error("text without tokenizer", InputError, r"LanguageModel\(GPT2LMHeadModel\) has no tokenizer",
          trace("bare", "w1 w2")),
    error("empty prompt", InputError, r"the prompt is empty \(''\)", trace("gpt2", "")),
    error("empty list of prompts", InputError, r"empty list of prompts", trace("gpt2", [])),
    error("empty prompt in a list", InputError, r"prompt 1 of the list is empty \(''\)", trace("gpt2", ["w1", ""])),
    error("trace of a list mixing a prompt and an id", InputError, r"element 1 of model\.trace\(\)'s input "
          r"\['w1 w2', 3\] is 3 \(a token id\), but element 0 is a string; a list holds prompts \(strings\) only, so "
          r"pass one kind",
          trace("gpt2", ["w1 w2", 3])),
    error("trace of a list of None", InputError, r"element 0 of model\.trace\(\)'s input \[None\] is None "
          r"\(a NoneType\), neither a prompt", trace("llama", [None])),
    error("trace of a float numpy array of ids", InputError, r"got a numpy array of float32 with shape \(1, 2\) as "
          r"model\.trace\(\)'s input", trace("bare", np.array([[1, 2]], dtype=np.float32))),
    *[error(f"trace token id {i} outside the vocabulary", InputError, rf"token id {i} at position 1 of "
            r"model\.trace\(\)'s input_ids \(token ids of shape \(1, 3\)\) is outside the vocabulary of 50 tokens "
            r"\(the rows of the input embedding\); pass ids from 0 to 49", trace("bare", torch.tensor([[3, i, 5]])))
      for i in (99, -2)],
    error("llama trace id outside the vocabulary", InputError, r"token id 50 at position 0 of row 1 of "
          r"model\.trace\(\)'s input_ids", trace("llama", input_ids=torch.tensor([[1, 2], [50, 3]]))),
    error("trace of a word past the vocabulary", InputError, r"token id 55 at position 0 of model\.trace\(\)'s "
          r"input_ids", trace("gpt2", "w55 w2")),
    error("empty tensor of ids", InputError, r"empty tensor of token ids",
          trace("gpt2", torch.tensor([], dtype=torch.long))),
    error("plain input on another device", InputError, r"shape \(1, 4\) is on meta, but the model is on cpu.*"
          r"\.to\('cpu'\)", trace("mlp", torch.ones(1, 4, dtype=torch.float64, device="meta"))),
    error("ids on another device", InputError, r"shape \(1, 6\) is on meta, but the model is on cpu",
          trace("gpt2", IDS.to("meta"))),
    error("llama ids on another device", InputError, r"is on meta, but the model is on cpu",
          trace("llama", IDS.to("meta"))),
    error("image on another device", InputError, r"shape \(1, 1, 5, 5\) is on meta",
          lambda m: trace("cnn", m.img.to("meta"))(m)),
    # one pass per block
    error("nested traces of one model", AlreadyTracedError, r"GPT2LMHeadModel is already being traced", nested("gpt2")),
    error("nested traces of llama", AlreadyTracedError, r"LlamaForCausalLM is already being traced", nested("llama")),
    error("trace object entered twice", ReusedBlockError, r"this Trace object was already used.*model\.trace",
          reused_trace),
    error("context object entered twice", ReusedBlockError, r"this BackwardContext object.*loss\.backward",
          reused_context),
    # envoy paths
    error("misspelled submodule", ModulePathError, r"model\.transformer \(GPT2Model\) has no submodule or attribute "
          r"'hh' \(did you mean 'h'\?", lambda m: m.gpt2.transformer.hh),
    error("layer index past the end", ModulePathError, r"model\.transformer\.h\[5\] is out of range: "
          r"model\.transformer\.h has 2 submodules", lambda m: m.gpt2.transformer.h[5]),
    error("negative layer index past the start", ModulePathError, r"model\.transformer\.h\[-3\] is out of range",
          lambda m: m.gpt2.transformer.h[-3]),
    error("string index of a ModuleList", ModulePathError, r"model\.transformer\.h \(ModuleList\) has no submodule or "
          r"attribute 'x'", lambda m: m.gpt2.transformer.h["x"]),
    error("misspelled root attribute", ModulePathError, r"'lm_haed' \(did you mean 'lm_head'\?",
          lambda m: m.gpt2.lm_haed),
    error("misspelled llama layers", ModulePathError, r"model\.model \(LlamaModel\).*'layerz' \(did you mean 'layers'",
          lambda m: m.llama.model.layerz),
    error("llama layer index past the end", ModulePathError, r"model\.model\.layers\[2\] is out of range",
          lambda m: m.llama.model.layers[2]),
    error("Sequential index past the end", ModulePathError, r"model\[3\] is out of range: model has 3 submodules",
          lambda m: m.mlp[3]),
    error("misspelled CNN layer", ModulePathError, r"'conv2' \(did you mean 'conv'", lambda m: m.cnn.conv2),
    error("submodule() of a missing name", ModulePathError, r"model\.transformer \(GPT2Model\).*'nope'",
          lambda m: m.gpt2.transformer.submodule("nope")),
    error("misspelled path inside a trace", ModulePathError, r"model\.transformer\.h\[0\].*'mpl' \(did you mean 'mlp'",
          reads("gpt2", "transformer.h.0.mpl.output")),
    error("attribute set on an envoy", ReadOnlyEnvoyError, r"model\.transformer\.h\[0\]\.foo cannot be set",
          set_envoy_attribute),
    error("weight set on an envoy", ReadOnlyEnvoyError, r"model\[0\]\.weight cannot be set.*model\[0\]\.module",
          set_envoy_weight),
    # values outside a trace
    error("output outside a trace", NotInTraceError, r"model\.transformer\.h\[0\]\.output exists only inside "
          r"`with model\.trace", lambda m: m.gpt2.transformer.h[0].output),
    error("model output outside a trace", NotInTraceError, r"model\.output exists only inside",
          lambda m: m.gpt2.output),
    error("input outside a trace", NotInTraceError, r"model\.model\.layers\[0\]\.input exists only inside",
          lambda m: m.llama.model.layers[0].input),
    error("inputs outside a trace", NotInTraceError, r"model\[2\]\.inputs exists only inside",
          lambda m: m.mlp[2].inputs),
    error("output assigned outside a trace", NotInTraceError, r"model\.transformer\.h\[0\]\.output exists only inside",
          set_outside),
    error("output read after the trace", NotInTraceError, r"model\.transformer\.h\[0\]\.output exists only inside.*"
          r"\.save\(\)", after_trace),
    error("plain output read after the trace", NotInTraceError, r"model\[0\]\.output exists only inside",
          after_trace_plain),
    # order
    error("outputs out of order", OutOfOrderError, r"model\.transformer\.h\[0\]\.output was read after the model ran "
          r"past it \(it was at model\.transformer\.h\[1\]\)", reads("gpt2", "transformer.h.1.output",
                                                                    "transformer.h.0.output")),
    error("input out of order", OutOfOrderError, r"model\.transformer\.h\[0\]\.input was read after the model ran past",
          reads("gpt2", "transformer.h.1.output", "transformer.h.0.input")),
    error("llama sublayer after its layer", OutOfOrderError, r"model\.model\.layers\[0\]\.self_attn\.output was read "
          r"after", reads("llama", "model.layers.1.output", "model.layers.0.self_attn.output")),
    error("CNN layers out of order", OutOfOrderError, r"model\.conv\.output was read after.*it was at model\.head",
          reads("cnn", "head.output", "conv.output")),
    error("plain layer after the root output", OutOfOrderError, r"model\[0\]\.output was read after.*it was at model\)",
          reads("mlp", "output", "0.output")),
    error("output assigned after the model ran past it", OutOfOrderError,
          r"model\.transformer\.h\[0\]\.output was assigned after the model ran past it", assign_late),
    error("plain output assigned late", OutOfOrderError, r"model\[0\]\.output was assigned after", assign_late_plain),
    error("module that never runs", NeverRanError, r"model\.unused\.output was read, but model\.unused never ran",
          reads("skips", "unused.output")),
    error("module that never runs, read last", NeverRanError, r"model\.unused\.output was read, but model\.unused "
          r"never ran", reads("skips", "output", "unused.output")),
    error("module value first read inside a context", NotInTraceError, r"model\.transformer\.h\[0\]\.output was first "
          r"read inside a backward context", first_read_in_context),
    error(".inputs set to a tensor", InputError, r"model\.transformer\.h\[0\]\.inputs must be set to \(args_tuple, "
          r"kwargs_dict\), got Tensor", set_inputs(lambda m: torch.zeros(3))),
    error(".inputs set to a list pair", InputError, r"model\[2\]\.inputs must be set to \(args_tuple, kwargs_dict\), "
          r"got tuple", set_inputs_plain),
    error("reads after the model failed", TraceFailedError, r"already failed with ValueError: Raises got the marked "
          r"input 13", failed_then_read),
    # correct results
    correct("trace of 1-D token ids", trace_1d_ids,
            lambda m, got: close(got, m.gpt2.module(IDS).logits.detach())),
    correct("negative layer index", negative_index,
            lambda m, got: close(got, output_of(m.gpt2.module, m.gpt2.module.transformer.h[1], IDS).detach())),
    correct("a list of prompts of different lengths", prompt_list, check_prompt_list),
    correct("trace of a list of ids", trace("bare", IDS[0].tolist()),
            lambda m, got: close(got.logits, m.gpt2.module(IDS).logits.detach())),
    correct("trace of numpy int ids", trace("llama", IDS.numpy()),
            lambda m, got: close(got.logits, m.llama.module(IDS).logits.detach())),
    correct("trace of rows of ids of different lengths", lambda m: trace_last(m, [[3, 14, 15], [9, 26]]),
            check_prompt_list),
    correct("an output replaced by zeros", zeroed_output,
            lambda m, got: close(got, m.mlp.module[2](torch.zeros(2, 8, dtype=torch.float64).tanh()).detach())),
]


@pytest.mark.parametrize("case", CASES, ids=ids_of(CASES))
def test_bad_core_input(case):
    run_case(case)
