"""Seeded property tests of the methods' arguments, valid and invalid mixed: every call either returns finite
results of the right shape or raises an AttribError subclass — never another exception, never a hang — and
leaves the models clean and computing the same logits. ``derandomize=True``: the same examples on every run."""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import attrib
from tests.conftest import no_hang

from . import badcases
from .badcases import CORRUPT, IDS, assert_clean, models, recording_greenlets, reference_logits, snapshot

_one_thread = badcases.one_thread

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_LAYERS, N_HEADS = 2, 4
PROMPTS = {"ids": IDS, "1-D ids": IDS[0], "text": "w3 w14 w15", "two texts": ["w3 w14", "w3 w14 w15"],
           "three rows": torch.cat([IDS, CORRUPT, IDS]), "a list of ids": [3, 14, 15]}


def attempt(call) -> tuple[Any, BaseException | None]:
    """Run ``call`` on clean models: (result, None) or (None, the AttribError it raised); anything else fails."""
    m = models()
    modules = m.modules()
    before = snapshot(modules)
    with no_hang(), recording_greenlets() as made:
        try:
            result, err = call(m), None
        except attrib.AttribError as e:
            result, err = None, e
    assert_clean(modules, before, made)
    assert all(torch.equal(a, b) for a, b in zip(m.logits(), reference_logits(), strict=True))
    if err is not None:
        assert 20 <= len(str(err)) and "Traceback" not in str(err)
    event("result" if err is None else type(err).__name__)
    return result, err


def check_attributions(result: Any, n_items: int | None, per_token: bool = False) -> None:
    """One Attribution per item (one, not a list, for a single item): finite, one score per token."""
    results = result if isinstance(result, list) else [result]
    assert isinstance(result, list) == (n_items is not None)
    assert len(results) == (n_items or 1)
    for r in results:
        assert isinstance(r, attrib.Attribution)
        assert torch.isfinite(r.values).all() and torch.isfinite(r.scores).all()
        n_tokens = len(r.tokens)
        assert r.scores.shape[-1] == n_tokens and n_tokens in r.values.shape
        assert r.scores.dim() == (2 if per_token else 1)
        if r.delta is not None:
            assert torch.isfinite(r.delta).all()


def items_of(prompt: str) -> int | None:
    """How many results a prompt gives as a list (None: one result, not a list)."""
    return {"two texts": 2, "three rows": 3}.get(prompt)


# -- integrated gradients and saliency on the language model --------------------------------------------------
def pick(data: st.DataObject, arguments: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]) -> dict[str, Any]:
    """A value for each argument: valid ones, except for up to two arguments chosen to get invalid values (so
    that every error is reached, and most calls get far enough to compute)."""
    bad = data.draw(st.sets(st.sampled_from(sorted(arguments)), max_size=2), label="invalid")
    return {name: data.draw(invalid if name in bad else valid, label=name)
            for name, (valid, invalid) in arguments.items()}


PROMPT = (st.sampled_from(sorted(PROMPTS)), st.sampled_from(["", ["w1", 2], [1, 99], 7, None, b"w3", [""]]))
N_STEPS = (st.integers(1, 6), st.one_of(st.integers(-2, 0), st.sampled_from([2.5, "3", None, True, [4]])))
BATCH_SIZE = (st.one_of(st.none(), st.integers(1, 9)), st.sampled_from([0, -1, 2.0, True, 1.5, [2]]))
TARGET = (st.one_of(st.none(), st.integers(0, 49), st.sampled_from(["w3", "w3 w4", [3, 4], [3], (7,), torch.tensor(3),
                                                                      torch.tensor([3, 4]), "w49"])),
          st.one_of(st.integers(-3, -1), st.integers(50, 55),
                    st.sampled_from(["", 1.5, True, ["w1", "w2"], {}, torch.tensor(1.5), [3, 99], []])))
RULE = (st.sampled_from(["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]),
        st.sampled_from(["riemann", "GaussLegendre", None, 3]))
BASELINE = (st.sampled_from(["zeros", "pad", 0, 7, 49, (6, 32), (1, 6, 32)]),
            st.sampled_from([50, -1, "random", True, None, 1.5, (3,), (6, 31), (2, 6, 32)]))
SCORE = (st.sampled_from(["logit", "logprob", "prob"]), st.sampled_from(["probability", None, "Logit"]))
CONTRAST = (st.one_of(st.none(), st.sampled_from([4, "w5"])), st.sampled_from([60, [4, 5, 6], 2.5, -2]))


def as_baseline(b: Any) -> Any:
    return torch.full(b, 0.1, dtype=torch.float64) if isinstance(b, tuple) else b


def prompt_of(name: Any) -> Any:
    return PROMPTS.get(name, name) if isinstance(name, str) else name


@settings(max_examples=250, **SETTINGS)
@given(data=st.data())
def test_integrated_gradients_returns_finite_results_or_an_attrib_error(data):
    a = pick(data, {"prompt": PROMPT, "n_steps": N_STEPS, "batch_size": BATCH_SIZE, "target": TARGET, "rule": RULE,
                    "baseline": BASELINE, "score": SCORE, "contrast": CONTRAST,
                    "per_token": (st.booleans(), st.sampled_from(["yes", 2]))})
    result, err = attempt(lambda m: attrib.integrated_gradients(
        m.gpt2, prompt_of(a["prompt"]), target=a["target"], n_steps=a["n_steps"], batch_size=a["batch_size"],
        rule=a["rule"], baseline=as_baseline(a["baseline"]), score=a["score"], contrast=a["contrast"],
        per_token=a["per_token"]))
    if err is None:
        check_attributions(result, items_of(a["prompt"]), bool(a["per_token"]))


LAYER = (st.sampled_from(["resid_post.0", "resid_post.-1", "mlp_out.1", "attn_out.0", "resid_pre.1", "z.0", "q.1",
                          "transformer.h.0", "transformer.h.0.mlp", "embed"]),
         st.sampled_from(["resid_post.5", "lm_head", 3, "x.0", "resid_post", "transformer.hh.0"]))


@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_layer_integrated_gradients_returns_finite_results_or_an_attrib_error(data):
    a = pick(data, {"prompt": PROMPT, "layer": LAYER, "n_steps": N_STEPS, "target": TARGET,
                    "baseline": (st.sampled_from(["zeros", "pad", 0, 9]), st.sampled_from([99, -1])),
                    "batch_size": BATCH_SIZE})
    result, err = attempt(lambda m: attrib.integrated_gradients(
        m.gpt2, prompt_of(a["prompt"]), target=a["target"], n_steps=a["n_steps"], layer=a["layer"],
        baseline=a["baseline"], batch_size=a["batch_size"]))
    if err is None:
        check_attributions(result, items_of(a["prompt"]))


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_saliency_returns_finite_results_or_an_attrib_error(data):
    a = pick(data, {"prompt": PROMPT, "target": TARGET, "score": SCORE, "batch_size": BATCH_SIZE,
                    "mode": (st.sampled_from(["grad", "grad_x_input"]), st.sampled_from(["x", None, "Grad"])),
                    "smooth": (st.integers(0, 4), st.sampled_from([-1, 2.5, True, "2"])),
                    "smooth_type": (st.sampled_from(["smoothgrad", "smoothgrad_sq", "vargrad"]), st.just("sg")),
                    "noise": (st.floats(0.0, 1.0), st.sampled_from([-0.5, float("inf"), float("nan"), "0.1"])),
                    "seed": (st.one_of(st.none(), st.integers(0, 3)), st.sampled_from([1.5, "1", True]))})
    result, err = attempt(lambda m: attrib.saliency(
        m.gpt2, prompt_of(a["prompt"]), target=a["target"], mode=a["mode"], smooth=a["smooth"],
        smooth_type=a["smooth_type"], noise=a["noise"], seed=a["seed"], batch_size=a["batch_size"], score=a["score"]))
    if err is None:
        check_attributions(result, items_of(a["prompt"]))


# -- patching -------------------------------------------------------------------------------------------------
PAIRS = {"ids": (IDS, CORRUPT), "texts": ("w3 w14 w15", "w3 w7 w15"), "1-D ids": (IDS[0], CORRUPT[0]),
         "lengths differ": (IDS, CORRUPT[:, :4]), "batch": (torch.cat([IDS, IDS]), CORRUPT),
         "text and ids": ("w3 w14 w15", IDS)}
VALID_PAIRS = ["ids", "texts", "1-D ids"]
COMPONENTS = (st.one_of(st.sampled_from(["resid", "attn", "mlp", "heads"]), st.lists(
    st.sampled_from(["resid", "attn", "mlp", "heads"]), min_size=1, max_size=3)),
    st.sampled_from(["head", "x", "", ["nope"], ["resid", "nope"], [], ["Resid"], ("mlp", "attn_out")]))
POSITIONS = (st.one_of(st.none(), st.integers(-3, 2), st.lists(st.integers(-3, 2), min_size=1, max_size=3)),
             st.one_of(st.integers(6, 9), st.integers(-9, -7), st.sampled_from([[], [True], ["1"], [1.5], "1"])))


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_patching_returns_finite_results_or_an_attrib_error(data):
    a = pick(data, {"method": (st.sampled_from(["attribution_patching", "activation_patching"]),) * 2,
                    "pair": (st.sampled_from(VALID_PAIRS), st.sampled_from(sorted(set(PAIRS) - set(VALID_PAIRS)))),
                    "target": TARGET, "contrast": CONTRAST, "components": COMPONENTS, "positions": POSITIONS,
                    "direction": (st.sampled_from(["denoise", "noise"]), st.sampled_from(["both", None])),
                    "batch_size": BATCH_SIZE, "score": SCORE})
    clean, corrupted = PAIRS[a["pair"]]
    components = a["components"]
    result, err = attempt(lambda m: getattr(attrib, a["method"])(
        m.gpt2, clean, corrupted, target=a["target"], contrast=a["contrast"], components=components,
        positions=a["positions"], direction=a["direction"], batch_size=a["batch_size"], score=a["score"]))
    if err is None:
        assert isinstance(result, attrib.PatchingResult)
        n_pos = len(result.positions)
        assert result.positions == sorted(set(result.positions)) and n_pos >= 1
        wanted = [components] if isinstance(components, str) else list(dict.fromkeys(components))
        assert list(result.scores) == wanted
        for c, s in result.scores.items():
            assert s.shape == ((N_LAYERS, N_HEADS, n_pos) if c == "heads" else (N_LAYERS, n_pos))
            assert torch.isfinite(s).all()


# -- a plain model ----------------------------------------------------------------------------------------
@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_a_plain_model_returns_finite_results_or_an_attrib_error(data):
    a = pick(data, {"method": (st.sampled_from(["integrated_gradients", "saliency"]),) * 2,
                    "rows": (st.sampled_from([1, 2]),) * 2,
                    "target": (st.one_of(st.none(), st.integers(0, 2), st.just([0, 2])),
                               st.sampled_from([-1, 3, [0, 1, 2], "a", 1.5])),
                    "baseline": (st.sampled_from(["zeros", 0.5, -1, (4,), (1, 4)]), st.sampled_from(["pad", (3,)])),
                    "n_steps": N_STEPS, "batch_size": BATCH_SIZE, "metric": (st.booleans(),) * 2})
    rows, target = a["rows"], a["target"]
    if rows == 1 and target == [0, 2]:
        target = [2]

    def call(m):
        kwargs = dict(target=None if a["metric"] and target is not None and data.draw(st.booleans()) else target,
                      batch_size=a["batch_size"], metric=(lambda out: out[:, 0]) if a["metric"] else None)
        if a["method"] == "integrated_gradients":
            return attrib.integrated_gradients(m.mlp, m.x[:rows], n_steps=a["n_steps"],
                                               baseline=as_baseline(a["baseline"]), **kwargs)
        return attrib.saliency(m.mlp, m.x[:rows], **kwargs)

    result, err = attempt(call)
    if err is None:
        results = result if isinstance(result, list) else [result]
        assert isinstance(result, list) == (rows > 1) and len(results) == rows
        for r in results:
            assert r.values.shape == (4,) and torch.isfinite(r.values).all() and torch.isfinite(r.scores).all()
