"""The code in docs/architecture.md runs: the worked example adds a working method on the adapter."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

import attrib
from tests.conftest import WordTokenizer, stacked, tiny_hf

DOC = pathlib.Path(__file__).parent.parent / "docs" / "architecture.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def occlusion():
    namespace: dict = {}
    exec(blocks()[0], namespace)
    return namespace["occlusion"]


def test_the_worked_example_is_under_40_lines():
    assert len(blocks()[0].strip().splitlines()) < 40


def test_occlusion_of_a_linear_model_is_input_times_weight(occlusion):
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 2).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    got = occlusion(attrib.Model(lin), x, target=1)
    torch.testing.assert_close(stacked(got, "scores"), x * lin.weight[1].detach(), rtol=1e-12, atol=1e-12)


def test_occlusion_on_a_language_model_takes_every_input_form(occlusion):
    model = attrib.LanguageModel(tiny_hf("gpt2"), WordTokenizer())
    one = occlusion(model, "w5 w17 w23", target=" w7", score="prob")
    assert one.tokens == [" w5", " w17", " w23"] and one.scores.shape == (3,)
    by_ids = occlusion(model, torch.tensor([5, 17, 23]), target=7, score="prob")
    torch.testing.assert_close(by_ids.scores, one.scores, rtol=0, atol=0)
    two = occlusion(model, ["w5 w17 w23", "w1 w2"], target=7, score="prob")
    assert [len(a.tokens) for a in two] == [3, 2]
    torch.testing.assert_close(two[0].scores, one.scores, rtol=1e-9, atol=1e-12)


def test_the_layout_example_registers(tmp_path):
    from attrib.models import layouts

    namespace: dict = {}
    before = dict(layouts.LAYOUTS)
    try:
        exec(blocks()[2], namespace)
        assert layouts.LAYOUTS["my_model"].o_proj == "attn.out"
    finally:
        layouts.LAYOUTS.clear()
        layouts.LAYOUTS.update(before)


def test_the_worked_rule_in_docs_rules_runs_and_keeps_its_promise():
    text = (DOC.parent / "rules.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    exec(block, namespace)                        # the block asserts what the rule promises
    assert namespace["g"].shape == (3, 8)
    assert not namespace["net"][1]._forward_hooks  # and the rules are gone after it
