"""Fixtures of the dataset-run tests: a tiny seeded Llama (ReLU MLPs, so that guided backprop applies) saved as a
local Hugging Face folder with a word-level tokenizer (as `attrib run --model FOLDER` loads it), a prompts file,
the CLI run as a subprocess, and one uninterrupted reference run."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Sequence

import pytest
import torch
from safetensors import safe_open

import attrib
from tests.reliability import badcases

ROOT = pathlib.Path(__file__).resolve().parents[2]

# twelve prompts: targets as text, as ids, of two tokens, none (the model's prediction), with a contrast
ROWS: list[dict[str, Any]] = [
    {"prompt": "w3 w14 w15 w9", "target": " w26"},
    {"prompt": "w5 w7", "target": " w11", "id": "second"},
    {"prompt": "w1 w2 w3 w4 w5", "contrast": " w40"},
    {"prompt": "w8 w9 w10", "target": [12]},
    {"prompt": "w21 w22 w23 w24", "target": " w6 w7"},
    {"prompt": "w30 w31", "target": " w2", "contrast": " w3", "meta": {"source": "test"}},
    {"prompt": "w44 w45 w46", "target": " w47", "id": "<b>&"},
    {"prompt": "w12 w13 w14 w15 w16 w17", "target": " w18"},
    {"prompt": "w33", "target": " w34"},
    {"prompt": "w41 w42 w43", "target": " w44"},
    {"prompt": "w6 w5 w4 w3 w2", "target": " w1"},
    {"prompt": "w19 w20 w21", "target": " w22"},
]


def word_tokenizer():
    """Word-level tokenizer for the tiny model's 50-token vocabulary: ``"w7"`` is token 7, ``<pad>`` is 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, **{f"w{i}": i for i in range(1, 50)}}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


def save_tiny_llama(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50, max_position_embeddings=64, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0, hidden_act="relu")
    LlamaForCausalLM(config).to(torch.float64).eval().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> pathlib.Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_folder) -> attrib.LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_folder), local_files_only=True).eval()
    return attrib.LanguageModel(hf, AutoTokenizer.from_pretrained(str(tiny_folder), local_files_only=True))


def write_jsonl(path: pathlib.Path, rows: Sequence[Any]) -> pathlib.Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def prompts(tmp_path) -> pathlib.Path:
    return write_jsonl(tmp_path / "prompts.jsonl", ROWS)


def env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess: one thread (as torchrun's processes), attrib importable from the repo."""
    found = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    found.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return found


def cli(*args: str, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m attrib ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "attrib", *args], env=env(**extra_env), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def index_lines(folder: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]


def shard_tensors(folder: pathlib.Path) -> dict[str, dict[str, torch.Tensor]]:
    found = {}
    for path in sorted(folder.glob("shard-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            found[path.name] = {name: f.get_tensor(name) for name in f.keys()}
    return found


def assert_same_run(got: pathlib.Path, want: pathlib.Path) -> None:
    """Two finished runs hold the same index (each id once, same values) and bit-identical tensors, and ``got``
    holds nothing else (no temporary file, no rank index)."""
    lines = index_lines(got)
    ids = [str(line["id"]) for line in lines]
    assert len(ids) == len(set(ids)), "an id is in the index twice"
    assert lines == index_lines(want)
    a, b = shard_tensors(got), shard_tensors(want)
    assert a.keys() == b.keys()
    for shard in a:
        assert a[shard].keys() == b[shard].keys()
        for name in a[shard]:
            assert torch.equal(a[shard][name], b[shard][name]), f"{shard}:{name} differs"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())


# one intra-op thread for every test here, as in the subprocesses (tiny models gain nothing from more, and on a busy
# machine torch's spinning threads slow every pass many times over)
one_thread = badcases.one_thread


# the options of every subprocess run of the resume and distributed tests; a batch size of their own, since planned
# passes (batch_size=None) depend on what the process planned before (a plan made at one prompt length serves the
# next chunks), so a resumed or distributed run would agree with one uninterrupted process to rounding, not bit for bit
RUN_OPTIONS = ("--method", "ig", "--n-steps", "64", "--batch-size", "32", "--chunk", "2", "--no-progress")


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> pathlib.Path:
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", ROWS)


@pytest.fixture(scope="session")
def reference(tiny_folder, prompts_file, tmp_path_factory) -> pathlib.Path:
    """One uninterrupted one-process run of the CLI: what every killed, resumed or distributed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = cli("run", str(prompts_file), "--model", str(tiny_folder), "--out", str(out), *RUN_OPTIONS)
    assert done.returncode == 0, done.stderr
    return out
