"""Bad arguments to integrated_gradients (also layer IG) and saliency / SmoothGrad: each case raises one clear
AttribError subclass naming the argument, or gives a result equal to an independent computation, and leaves
every model clean and computing bit-identical logits (tests/reliability/badcases.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attrib
from attrib import InputError, LayoutError, MethodError, TargetError

from . import badcases
from .badcases import IDS, Case, close, correct, embed_grad, error, gauss_legendre, hand_ig, ids_of, run_case, v

_one_thread = badcases.one_thread


def ig(model_name: str = "gpt2", inputs=None, **kwargs):
    kwargs.setdefault("n_steps", 2)
    kwargs.setdefault("baseline", "zeros")
    if "target" not in kwargs and "metric" not in kwargs:
        kwargs["target"] = 3 if model_name in ("gpt2", "llama", "bare") else 0
    return lambda m: attrib.integrated_gradients(getattr(m, model_name), _inputs(m, model_name, inputs), **kwargs)


def sal(model_name: str = "gpt2", inputs=None, **kwargs):
    if "target" not in kwargs and "metric" not in kwargs:
        kwargs["target"] = 3 if model_name in ("gpt2", "llama", "bare") else 0
    return lambda m: attrib.saliency(getattr(m, model_name), _inputs(m, model_name, inputs), **kwargs)


def _inputs(m, model_name, inputs):
    if inputs is not None:
        return inputs(m) if callable(inputs) else inputs
    return {"mlp": m.x, "cnn": m.img, "skips": m.x}.get(model_name, IDS)


def embedding_model() -> attrib.Model:
    """A plain model that takes integer ids (its own embedding first)."""
    torch.manual_seed(0)
    return attrib.Model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(),
                                            torch.nn.Linear(8, 2)).double())


def metric(logits):
    return logits[:, -1, 0]


# -- independent computations ----------------------------------------------------------------------------
def logit(t):
    return lambda logits: logits[0, -1, t]


def check_ig(model_name, score, n_steps=2, baseline_id=None, ids=IDS):
    def check(m, got):
        hf = getattr(m, model_name).module
        base = None if baseline_id is None else hf.get_input_embeddings()(torch.tensor([[baseline_id]])).detach()
        close(got.values, hand_ig(hf, ids, score, n_steps, base)[0])
    return check


def check_grad(model_name, score, ids=IDS, norm=True):
    def check(m, got):
        hf = getattr(m, model_name).module
        g = embed_grad(hf, hf.get_input_embeddings()(ids), score)[0]
        close(got.values, g)
        close(got.scores, g.norm(dim=-1) if norm else g)
    return check


def check_plain_ig(m, got):
    """IG of the MLP's class 1 from the baseline 0.5, each row on its own."""
    net = m.mlp.module
    alphas, weights = gauss_legendre(2)
    for row, result in zip(m.x, got):
        b = torch.full_like(row, 0.5)
        total = torch.zeros_like(row)
        for a, w in zip(alphas, weights):
            point = (b + a * (row - b)).requires_grad_(True)
            total += w * torch.autograd.grad(net(point[None])[0, 1], point)[0]
        close(result.values, (row - b) * total)


def check_plain_grads(model_name, targets):
    def check(m, got):
        model = getattr(m, model_name)
        x = m.x if model_name == "mlp" else m.img
        for row, t, result in zip(x, targets, got if isinstance(got, list) else [got]):
            leaf = row[None].clone().requires_grad_(True)
            close(result.values, torch.autograd.grad(model.module(leaf)[0, t], leaf)[0][0])
    return check


def check_layer_ig(m, got):
    """Layer IG at the MLP's first Linear: its output interpolated from its value at the zero input."""
    net = m.mlp.module
    alphas, weights = gauss_legendre(2)
    for row, result in zip(m.x, got):
        h, hb = net[0](row[None]).detach(), net[0](torch.zeros_like(row)[None]).detach()
        total = torch.zeros_like(h)
        for a, w in zip(alphas, weights):
            point = (hb + a * (h - hb)).requires_grad_(True)
            total += w * torch.autograd.grad(net[2](net[1](point))[0, 0], point)[0]
        close(result.values, ((h - hb) * total)[0])


def right_padded(m):
    return {"input_ids": torch.tensor([[3, 14, 15, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0, 0]])}


def logprob(t):
    return lambda logits: torch.log_softmax(logits[0, -1], -1)[t]


def top_token(m):
    with torch.no_grad():
        return int(m.gpt2.module(IDS).logits[0, -1].argmax())


CASES: list[Case] = [
    # the model argument
    error("IG of an unwrapped module", MethodError, r"model must be an attrib\.Model or attrib\.LanguageModel, got "
          r"GPT2LMHeadModel", lambda m: attrib.integrated_gradients(m.gpt2.module, IDS, target=3)),
    error("saliency of an unwrapped module", MethodError, r"model must be an attrib\.Model.*got Sequential",
          lambda m: attrib.saliency(m.mlp.module, m.x, target=0)),
    # n_steps, rule / method
    *[error(f"n_steps={k!r}", MethodError, rf"n_steps must be a positive integer or 'auto', got {v(k)}", ig(n_steps=k))
      for k in (0, -5, 2.5, "10", True)],
    error("n_steps='auto' with a rule", MethodError, r"n_steps='auto' chooses its own nodes \(adaptive Gauss–Kronrod\), "
          r"so rule='riemann_left' does not apply; drop it, or pass a number of steps such as n_steps=50",
          ig(n_steps="auto", rule="riemann_left")),
    error("unknown rule", MethodError, r"rule='riemann' is not one of riemann_left, .*gausslegendre",
          ig(rule="riemann")),
    error("unknown method", MethodError, r"method='foo' is not one of riemann_left, .*gausslegendre",
          ig(method="foo")),
    error("trapezoid with one step", MethodError, r"method='riemann_trapezoid' needs n_steps >= 2",
          ig(method="riemann_trapezoid", n_steps=1)),
    error("trapezoid rule with one step", MethodError, r"rule='riemann_trapezoid' needs n_steps >= 2 \(both ends of "
          r"the path\), got n_steps=1; pass n_steps=2", ig(rule="riemann_trapezoid", n_steps=1)),
    error("rule and method disagree", MethodError, r"rule='riemann_left' and method='riemann_right' disagree",
          ig(rule="riemann_left", method="riemann_right")),
    # targets (shared by every method)
    *[error(f"target id {t}", TargetError, rf"target has id {t}, outside the model's 50 outputs", ig(target=t))
      for t in (99, 50, -1)],
    error("llama target id 64", TargetError, r"target has id 64, outside the model's 50 outputs",
          ig("llama", target=64)),
    error("target 1.5", TargetError, r"target=1\.5 is not a string, a token / class id or a list of ids",
          ig(target=1.5)),
    error("target True", TargetError, r"target=True is a bool", ig(target=True)),
    error("target of no tokens", TargetError, r"target='' tokenizes to no tokens", ig(target="")),
    error("two targets for one prompt", TargetError, r"got 2 targets for 1 inputs", ig(target=["w1", "w2"])),
    error("float tensor target", TargetError, r"target is a torch\.float32 tensor; pass integer",
          ig(target=torch.tensor(1.5))),
    error("empty target list", TargetError, r"target is empty", ig(target=[])),
    error("dict target", TargetError, r"target=\{\} is not a string", ig(target={})),
    error("one bad id in a multi-token target", TargetError, r"target has id 99", ig(target=[3, 99])),
    error("callable target on a language model", TargetError, r"callable target is the plain-model form.*metric=",
          ig(target=metric)),
    error("text target without tokenizer", TargetError, r"target='w1' is text, but the model has no tokenizer",
          ig("bare", target="w1")),
    error("contrast of another length", TargetError, r"contrast=\[4, 5\] has 2 tokens but the target has 1",
          ig(contrast=[4, 5])),
    error("contrast id 99", TargetError, r"contrast has id 99, outside the model's 50 outputs", ig(contrast=99)),
    error("contrast 1.5", TargetError, r"contrast=1\.5 is not a string", ig(contrast=1.5)),
    error("unknown score", TargetError, r"score='probability' is not one of logit, logprob, prob",
          ig(score="probability")),
    error("score None", TargetError, r"score=None is not one of logit, logprob, prob", ig(score=None)),
    error("metric that is not callable", TargetError, r"metric must be a callable.*got 'x'", ig(metric="x")),
    error("metric with a contrast", TargetError, r"contrast= is scored by attrib; with metric=", ig(metric=metric,
                                                                                                 contrast=3)),
    error("metric with score='prob'", TargetError, r"score='prob' scores a target; with metric=",
          ig(metric=metric, score="prob")),
    error("per_token with a metric", MethodError, r"per_token=True needs a token target, not a metric",
          ig(metric=metric, per_token=True)),
    *[error(f"per_token={k!r}", MethodError, rf"per_token must be True or False, got {v(k)}", ig(per_token=k))
      for k in ("no", 1, None)],
    # baselines
    error("unknown baseline name", MethodError, r"baseline='random' is not 'auto', 'zeros', 'pad', a token id or a tensor",
          ig(baseline="random")),
    *[error(f"baseline token id {b}", MethodError, rf"baseline token id {b} is outside the vocabulary of size 50",
            ig(baseline=b)) for b in (99, -1)],
    error("llama baseline token id 50", MethodError, r"baseline token id 50 is outside the vocabulary of size 50",
          ig("llama", baseline=50)),
    *[error(f"baseline={b!r}", MethodError, rf"baseline={v(b)} is not 'auto', 'zeros', 'pad', a token id or a tensor",
            ig(baseline=b)) for b in (True, 1.5, None, [0] * 6)],
    *[error(f"baseline of shape {shape}", MethodError, rf"baseline has shape {v(shape)}; expected the prompt "
            r"embeddings' shape \(1, 6, 32\) \(or \(6, 32\)\)", ig(baseline=torch.zeros(shape, dtype=torch.float64)))
      for shape in ((3,), (6, 31), (2, 6, 32), (5, 32))],
    error("llama baseline of shape (6, 16)", MethodError, r"baseline has shape \(6, 16\); expected the prompt "
          r"embeddings' shape \(1, 6, 32\)", ig("llama", baseline=torch.zeros(6, 16, dtype=torch.float64))),
    # layer=
    error("layer past the last", LayoutError, r"resid_post\.9: layer 9 is outside the model's 2 layers",
          ig(layer="resid_post.9")),
    error("llama q site past the last", LayoutError, r"q\.5: layer 5 is outside the model's 2 layers",
          ig("llama", layer="q.5")),
    error("site without a layer", LayoutError, r"site 'resid_post' needs a layer index", ig(layer="resid_post")),
    error("site with a word for a layer", LayoutError, r"site 'mlp_out\.x' needs a layer index", ig(layer="mlp_out.x")),
    error("misspelled layer path", LayoutError, r"'transformer\.hh\.0' is neither a site name.*nor a module path of "
          r"GPT2LMHeadModel.*did you mean 'h'", ig(layer="transformer.hh.0")),
    error("llama layer path past the last", LayoutError, r"'model\.layers\.7' is neither a site name.*out of range",
          ig("llama", layer="model.layers.7")),
    error("layer given as an int", LayoutError, r"a site is a name like 'resid_post\.3', a module path or an envoy, "
          r"got int", ig(layer=3)),
    error("layer whose value has no positions", MethodError, r"layer='lm_head' has a value of shape \(1, 1, 50\), not "
          r"one vector per position", ig(layer="lm_head")),
    error("site name on a model without layout", LayoutError, r"no known layout fits CNN \(model_type None; looked for "
          r"layers at transformer\.h, .*\); pass component_map=\{'layers'.*register\(model_type, layout\)",
          ig("cnn", layer="resid_post.0")),
    # batch_size (every method)
    *[error(f"IG batch_size={b!r}", MethodError, rf"batch_size must be a positive int or None.*got {v(b)}",
            ig(batch_size=b)) for b in (0, -1, 2.0, True)],
    # inputs of a language model
    *[error(f"inputs of type {type(x).__name__}", InputError, rf"a language model takes text, a list of texts, token "
            rf"ids or a BatchEncoding, got {type(x).__name__}", ig(inputs=lambda m, x=x: x))
      for x in (123, None, b"w1")],
    error("a list mixing a prompt and an id", InputError, r"element 1 of inputs \['w1 w2', 3\] is 3 \(a token id\), "
          r"but element 0 is a string; a list holds prompts \(strings\) only", ig(inputs=lambda m: ["w1 w2", 3])),
    error("a list mixing ids and a prompt", InputError, r"element 2 of inputs \[3, 14, 'w15'\] is 'w15' \(a string\), "
          r"but element 0 is a token id", sal(inputs=lambda m: [3, 14, "w15"])),
    error("a list of floats", InputError, r"element 0 of inputs \[1\.5, 2\.5\] is 1\.5 \(a float\), neither a prompt",
          ig(inputs=lambda m: [1.5, 2.5])),
    error("a float numpy array", InputError, r"got a numpy array of float64 with shape \(1, 2\) as inputs; token ids "
          r"must be a non-empty integer array", ig(inputs=lambda m: np.array([[1.0, 2.0]]))),
    *[error(f"IG token id {i} outside the vocabulary", InputError, rf"token id {i} at position 2 of inputs \(token ids "
            r"of shape \(1, 6\)\) is outside the vocabulary of 50 tokens.*pass ids from 0 to 49",
            ig(inputs=torch.tensor([[3, 14, i, 9, 26, 5]]))) for i in (99, -2, 50)],
    error("saliency token id outside the vocabulary of row 1", InputError, r"token id 77 at position 0 of row 1 of "
          r"inputs \(token ids of shape \(2, 2\)\) is outside the vocabulary of 50",
          sal(inputs=lambda m: [[1, 2], [77, 3]])),
    error("llama token id outside the vocabulary", InputError, r"token id -1 at position 5 of inputs.*vocabulary of 50",
          sal("llama", inputs=torch.tensor([[3, 14, 15, 9, 26, -1]]))),
    error("a word past the vocabulary", InputError, r"token id 59 at position 1 of inputs.*vocabulary of 50 tokens",
          sal(inputs="w3 w59")),
    error("layer IG token id outside the vocabulary", InputError, r"token id 99 at position 0 of inputs",
          ig("bare", inputs=torch.tensor([[99, 3]]), layer="resid_post.0")),
    error("float token ids", InputError, r"token ids must be a non-empty integer tensor.*got torch\.float32 of shape "
          r"\(1, 2\)", ig(inputs=torch.tensor([[0.5, 1.0]]))),
    error("3-D token ids", InputError, r"token ids must be.*of shape \(T,\) or \(N, T\), got torch\.int64 of shape "
          r"\(2, 3, 4\)", ig(inputs=torch.zeros(2, 3, 4, dtype=torch.long))),
    error("dict without input_ids", InputError, r"needs 'input_ids'.*\['ids'\]", ig(inputs=lambda m: {"ids": IDS})),
    error("dict with a foreign entry", InputError, r"the inputs' 'foo' is not a tensor of the ids' shape \(1, 6\)",
          ig(inputs=lambda m: {"input_ids": IDS, "foo": 3})),
    error("an all-padding row", InputError, r"an input row has no tokens \(its attention mask is all zeros\)",
          ig(inputs=lambda m: {"input_ids": torch.tensor([[1, 2], [3, 4]]),
                               "attention_mask": torch.tensor([[1, 1], [0, 0]])})),
    error("empty prompt to IG", InputError, r"the prompt is empty \(''\)", ig(inputs="")),
    # plain models
    error("plain input without batch dimension", InputError, r"attrib\.Model\(Sequential\) takes a non-empty tensor "
          r"with a batch dimension first, got shape \(4,\).*x\[None\]", ig("mlp", inputs=lambda m: m.x[0])),
    error("text to a plain model's IG", InputError, r"text prompt \('abc'\) was given to attrib\.Model\(Sequential\)",
          ig("mlp", inputs="abc")),
    error("plain class id past the last", TargetError, r"target has id 5, outside the model's 3 outputs",
          ig("mlp", target=5)),
    error("CNN class id past the last", TargetError, r"target has id 3, outside the model's 3 outputs",
          ig("cnn", target=3)),
    error("two class ids for one row", TargetError, r"target=\[0, 1\]: a plain model takes one class id per row.*list "
          r"of 1 ints", ig("mlp", inputs=lambda m: m.x[:1], target=[0, 1])),
    error("three class ids for two rows", TargetError, r"target=\[0, 1, 2\]: a plain model takes one class id per row",
          ig("mlp", target=[0, 1, 2])),
    error("text class for a CNN", TargetError, r"target='cat' is text, but the model has no tokenizer",
          ig("cnn", target="cat")),
    error("plain baseline of another shape", MethodError, r"baseline has shape \(3,\); expected the inputs' shape "
          r"\(2, 4\)", ig("mlp", baseline=torch.zeros(3, dtype=torch.float64))),
    error("plain baseline 'pad'", MethodError, r"baseline='pad' is not 'auto', 'zeros', a number or a tensor",
          ig("mlp", baseline="pad")),
    error("plain target and metric", TargetError, r"pass target=\.\.\. or metric=\.\.\., not both",
          ig("mlp", target=0, metric=lambda out: out[:, 0])),
    error("plain IG input on another device", InputError, r"the input tensor is on meta, but the model is on cpu",
          ig("mlp", inputs=torch.ones(1, 4, dtype=torch.float64, device="meta"))),
    error("integer inputs without layer", MethodError, r"the inputs are torch\.int64, which has no gradient; pass "
          r"layer=", lambda m: attrib.integrated_gradients(embedding_model(), torch.tensor([[1, 2]]), target=0)),
    error("integer baseline id outside the embedding", MethodError, r"baseline=99 with layer='0' holds id 99, outside "
          r"the model's embedding of 10 rows; the baseline is still an input, so pass ids from 0 to 9",
          lambda m: attrib.integrated_gradients(embedding_model(), torch.tensor([[1, 2]]), target=0, layer="0",
                                                baseline=99)),
    error("integer baseline tensor with id -1", MethodError, r"baseline=<tensor of shape \(1, 2\), torch\.int64> with "
          r"layer='0' holds id -1, outside the model's embedding of 10 rows",
          lambda m: attrib.integrated_gradients(embedding_model(), torch.tensor([[1, 2]]), target=0, layer="0",
                                                baseline=torch.tensor([[0, -1]]))),
    error("integer inputs with baseline 'pad'", MethodError, r"baseline='pad'.*integer inputs take 'zeros', an id or "
          r"a tensor", lambda m: attrib.integrated_gradients(embedding_model(), torch.tensor([[1, 2]]),
                                                                     target=0, layer="0", baseline="pad")),
    # saliency and SmoothGrad
    *[error(f"saliency mode={k!r}", MethodError, rf"mode={v(k)} is not one of grad, grad_x_input", sal(mode=k))
      for k in ("gradient", None)],
    error("smooth_type 'sg'", MethodError, r"smooth_type='sg' is not one of smoothgrad, smoothgrad_sq, vargrad",
          sal(smooth=2, smooth_type="sg")),
    *[error(f"smooth={k!r}", MethodError, rf"smooth={v(k)} must be a whole number of noisy samples", sal(smooth=k))
      for k in (-1, 2.5, True, "3")],
    *[error(f"noise={k!r}", MethodError, rf"noise={v(k)} must be a finite number ≥ 0", sal(smooth=2, noise=k))
      for k in (-0.1, float("inf"), "0.1", True)],
    *[error(f"seed={k!r}", MethodError, rf"seed={v(k)} must be an int or None", sal(smooth=2, seed=k))
      for k in ("1", 1.5, True)],
    error("SmoothGrad options without smooth", MethodError, r"smooth_type='vargrad', noise=5\.0 and seed=1 are "
          r"SmoothGrad options, but smooth=0 runs plain saliency without noise; pass smooth=N > 0",
          sal(smooth=0, smooth_type="vargrad", noise=5.0, seed=1)),
    *[error(f"SmoothGrad {k}={x!r} alone", MethodError, rf"{k}={v(x)} is a SmoothGrad option, but smooth=0",
            sal(**{k: x})) for k, x in (("noise", 0.15), ("seed", 0), ("smooth_type", "smoothgrad"))],
    error("saliency batch_size 0", MethodError, rf"batch_size must be a positive int or None.*got {v(0)}",
          sal(batch_size=0)),
    error("llama saliency target id 99", TargetError, r"target has id 99", sal("llama", target=99)),
    error("saliency unknown score", TargetError, r"score='log' is not one of", sal(score="log")),
    error("saliency contrast of another length", TargetError, r"contrast=\[1, 2\] has 2 tokens",
          sal(contrast=[1, 2])),
    error("saliency of integer plain inputs", MethodError, r"the input is torch\.int64, which has no gradient",
          lambda m: attrib.saliency(embedding_model(), torch.tensor([[1, 2]]), target=0)),
    error("saliency input without batch dimension", InputError, r"got shape \(4,\); for one input of shape \(4,\) "
          r"pass x\[None\]", sal("mlp", inputs=lambda m: m.x[0])),
    error("CNN saliency class id -1", TargetError, r"target has id -1, outside the model's 3 outputs",
          sal("cnn", target=-1)),
    # correct results
    correct("0-d tensor target", ig(target=torch.tensor(3)), check_ig("gpt2", logit(3))),
    correct("numpy int target", ig(target=np.int64(3)), check_ig("gpt2", logit(3))),
    correct("list of a numpy int target", ig("llama", target=[np.int32(7)]), check_ig("llama", logit(7))),
    correct("numpy int contrast", sal(contrast=np.int64(4)),
            check_grad("gpt2", lambda lg: lg[0, -1, 3] - lg[0, -1, 4])),
    correct("numpy int baseline token id", ig(baseline=np.int64(0)), check_ig("gpt2", logit(3), baseline_id=0)),
    correct("0-d tensor baseline token id", ig(baseline=torch.tensor(0)), check_ig("gpt2", logit(3), baseline_id=0)),
    correct("a list of ids", ig(inputs=lambda m: IDS[0].tolist()), check_ig("gpt2", logit(3))),
    correct("numpy int ids", ig(inputs=lambda m: IDS.numpy()), check_ig("gpt2", logit(3))),
    correct("a list of numpy ints", sal(inputs=lambda m: [np.int64(i) for i in IDS[0].tolist()]),
            check_grad("gpt2", logit(3))),
    correct("a list of id rows", sal(inputs=lambda m: [IDS[0].tolist()]),
            lambda m, got: check_grad("gpt2", logit(3))(m, got[0]) if len(got) == 1 else pytest.fail("one result")),
    correct("per_token numpy bool", ig(per_token=np.bool_(False)), check_ig("gpt2", logit(3))),
    correct("one-element list target", ig(target=[3]), check_ig("gpt2", logit(3))),
    correct("tuple target", ig(target=(3,)), check_ig("gpt2", logit(3))),
    correct("1-D token ids", ig(inputs=IDS[0], n_steps=3), check_ig("gpt2", logit(3), n_steps=3)),
    correct("a rule named without n_steps: Captum's 50 steps", ig(n_steps=None, method="gausslegendre"),
            check_ig("gpt2", logit(3), n_steps=50)),
    correct("baseline token id 0", ig(baseline=0), check_ig("gpt2", logit(3), baseline_id=0)),
    correct("llama (1, 1) tensor target", ig("llama", target=torch.tensor([[7]])), check_ig("llama", logit(7))),
    correct("right-padded encoding", sal(inputs=right_padded),
            check_grad("gpt2", logit(3), torch.tensor([[3, 14, 15]]))),
    correct("saliency contrast", sal(contrast=4), check_grad("gpt2", lambda lg: lg[0, -1, 3] - lg[0, -1, 4])),
    correct("saliency logprob", sal("llama", score="logprob"), check_grad("llama", logprob(3))),
    correct("saliency target None", sal(target=None),
            lambda m, got: check_grad("gpt2", logit(top_token(m)))(m, got)),
    correct("plain baseline number", ig("mlp", target=1, baseline=0.5), check_plain_ig),
    correct("plain class id per row", sal("mlp", target=[0, 2]), check_plain_grads("mlp", [0, 2])),
    correct("plain class ids as a numpy array", sal("mlp", target=np.array([2, 1])), check_plain_grads("mlp", [2, 1])),
    correct("plain class id of a numpy int", sal("cnn", target=np.int16(1)), check_plain_grads("cnn", [1])),
    correct("CNN class id", sal("cnn", target=2), check_plain_grads("cnn", [2])),
    correct("layer given as an envoy", lambda m: attrib.integrated_gradients(m.mlp, m.x, target=0, n_steps=2,
                                                                             layer=m.mlp[0]), check_layer_ig),
]


@pytest.mark.parametrize("case", CASES, ids=ids_of(CASES))
def test_bad_method_argument(case):
    run_case(case)
