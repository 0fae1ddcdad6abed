"""The real model: `attrib run` without --model runs the demo model, and --model FILE.gguf loads a GGUF file; both
give what a direct call on the demo model gives (slow: each subprocess loads SmolLM2-135M)."""

from __future__ import annotations

import pytest
import torch

import attrib
from attrib.models.demo import _gguf_path

from .conftest import cli, index_lines, write_jsonl

ROWS = [{"prompt": "The capital of France is", "target": " Paris"},
        {"prompt": "The chemical symbol for gold is", "target": " Au", "contrast": " Ag"}]


def check_against(demo, out):
    for line, row in zip(index_lines(out), ROWS):
        want = attrib.saliency(demo, row["prompt"], target=row["target"], contrast=row.get("contrast"),
                               mode="grad_x_input")
        assert line["tokens"] == want.tokens and line["target"] == want.target
        torch.testing.assert_close(torch.tensor(line["scores"]), want.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_the_demo_model_is_the_default(demo, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS)
    done = cli("run", str(prompts), "--method", "saliency", "--mode", "grad_x_input", "--out", str(tmp_path / "run"),
               "--no-progress", "--device", "cpu", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    check_against(demo, tmp_path / "run")


@pytest.mark.slow
def test_a_gguf_file(demo, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", ROWS)
    done = cli("run", str(prompts), "--model", str(_gguf_path()), "--method", "saliency", "--mode", "grad_x_input",
               "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    check_against(demo, tmp_path / "run")
