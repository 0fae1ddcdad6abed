"""attrib.run_dataset in one process: every method's results equal direct calls of the method, the index and
shards hold them, a finished run is not computed again, and a restart with other options is refused."""

from __future__ import annotations

import json

import pytest
import torch

import attrib
from attrib.runs import load_results, read_index
from attrib.runs import runner

from .conftest import ROWS

TOL = dict(rtol=1e-7, atol=1e-10)

SINGLE = [("integrated_gradients", {"n_steps": 8}), ("saliency", {"mode": "grad_x_input"}), ("lrp", {}),
          ("deeplift", {}), ("guided_backprop", {}), ("deconvolution", {}), ("gim", {})]


def direct(model, method: str, row: dict, **options):
    """The method called on one prompt, as a user would."""
    target, contrast = row.get("target"), row.get("contrast")
    if isinstance(target, list) and len(target) == 1:
        target = target[0]
    return getattr(attrib, method)(model, row["prompt"], target=target, contrast=contrast, **options)


@pytest.mark.parametrize("method, options", SINGLE, ids=[m for m, _ in SINGLE])
def test_every_prompt_equals_a_direct_call(tiny_model, tmp_path, method, options):
    records = attrib.run_dataset(tiny_model, ROWS, method=method, out=tmp_path / "run", chunk=5, progress=False,
                                 **options)
    assert [r["id"] for r in records] == [row.get("id", i) for i, row in enumerate(ROWS, start=1)]
    for (record, result), row in zip(load_results(tmp_path / "run"), ROWS):
        want = direct(tiny_model, method, row, **options)
        assert record["tokens"] == want.tokens and result.tokens == want.tokens
        assert record["target"] == want.target == result.target
        torch.testing.assert_close(result.values, want.values, **TOL)
        torch.testing.assert_close(torch.tensor(record["scores"], dtype=want.scores.dtype), want.scores, **TOL)
        assert (record["delta"] is None) == (want.delta is None)
        if want.delta is not None:
            assert record["delta"] == pytest.approx(float(want.delta), rel=1e-6, abs=1e-9)
        assert record["meta"] == row.get("meta") and record["prompt"] == row["prompt"]


def test_gradient_shap_equals_a_direct_call_on_the_same_batch(tiny_model, tmp_path):
    """GradientSHAP draws its samples for a whole batch from the seed, so a chunk equals one call on its prompts."""
    rows = [row for row in ROWS if isinstance(row.get("target"), str) and len(row["target"].split()) == 1
            and "contrast" not in row]
    records = attrib.run_dataset(tiny_model, rows, method="gradient_shap", out=tmp_path / "run", chunk=len(rows),
                                 progress=False, seed=3, n_samples=4)
    want = attrib.gradient_shap(tiny_model, [r["prompt"] for r in rows], target=[r["target"] for r in rows], seed=3,
                                n_samples=4)
    assert len(records) == len(want) == 8
    for (record, result), expected in zip(load_results(tmp_path / "run"), want):
        assert record["tokens"] == expected.tokens
        torch.testing.assert_close(result.values, expected.values, **TOL)
        assert record["delta"] == pytest.approx(float(expected.delta), rel=1e-6, abs=1e-9)


PAIRS = [{"prompt": "w3 w14 w15 w9", "corrupted": "w3 w20 w15 w9", "target": " w26"},
         {"prompt": "w5 w7", "corrupted": "w6 w7", "target": " w11", "contrast": " w12"},
         {"prompt": "w1 w2 w3", "corrupted": "w1 w2 w4"}]


@pytest.mark.parametrize("method", ["attribution_patching", "activation_patching"])
def test_pair_methods_take_the_corrupted_prompt_of_each_line(tiny_model, tmp_path, method):
    records = attrib.run_dataset(tiny_model, PAIRS, method=method, out=tmp_path / "run", chunk=2, progress=False,
                                 components=["resid", "mlp"])
    assert [r["kind"] for r in records] == ["patching"] * 3
    for (record, result), row in zip(load_results(tmp_path / "run"), PAIRS):
        want = getattr(attrib, method)(tiny_model, row["prompt"], row["corrupted"], target=row.get("target"),
                                       contrast=row.get("contrast"), components=["resid", "mlp"])
        assert result.tokens == want.tokens and record["corrupted"] == row["corrupted"]
        for component in ("resid", "mlp"):
            torch.testing.assert_close(result.scores[component], want.scores[component], **TOL)
            torch.testing.assert_close(torch.tensor(record["scores"][component], dtype=torch.float64),
                                       want.scores[component].double(), **TOL)
        assert result.metric_clean == pytest.approx(want.metric_clean)


def test_a_pair_method_needs_a_corrupted_prompt_before_anything_is_written(tiny_model, tmp_path):
    with pytest.raises(attrib.RunError, match=r"attribution_patching patches a clean prompt with a corrupted one, "
                                              r"but line 2 \(id 2\) has no 'corrupted'"):
        attrib.run_dataset(tiny_model, [PAIRS[0], "w1 w2"], method="atp", out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_index_lines_say_where_the_tensors_lie(tiny_model, tmp_path):
    out = tmp_path / "run"
    attrib.run_dataset(tiny_model, ROWS, method="ig", out=out, chunk=5, progress=False, n_steps=4)
    lines = [json.loads(text) for text in (out / "index.jsonl").read_text().splitlines()]
    assert [line["shard"] for line in lines] == ["shard-000000.safetensors"] * 5 + \
        ["shard-000001.safetensors"] * 5 + ["shard-000002.safetensors"] * 2
    assert lines[6]["id"] == "<b>&" and lines[6]["tensors"] == {"scores": "<b>&/scores", "values": "<b>&/values",
                                                               "delta": "<b>&/delta"}
    assert sorted(p.name for p in out.iterdir()) == ["index.jsonl", "run.json", "shard-000000.safetensors",
                                                     "shard-000001.safetensors", "shard-000002.safetensors"]
    assert json.loads((out / "run.json").read_text())["options"] == {"n_steps": 4}


def test_a_finished_run_started_again_computes_nothing(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    first = attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, chunk=4, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def refuse(*args, **kwargs):
        raise AssertionError("a chunk was computed again")

    monkeypatch.setattr(runner, "run_chunk", refuse)
    assert attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, chunk=4, progress=False) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_a_restart_with_other_options_is_refused(tiny_model, tmp_path):
    out = tmp_path / "run"
    attrib.run_dataset(tiny_model, ROWS[:2], method="ig", out=out, chunk=4, progress=False, n_steps=4)
    with pytest.raises(attrib.RunError, match=r"'.*run' was started with other options \(n_steps 4 then, 8 now; "
                                              r"chunk 4 then, 2 now\); to resume, run the same command"):
        attrib.run_dataset(tiny_model, ROWS[:2], method="ig", out=out, chunk=2, progress=False, n_steps=8)
    with pytest.raises(attrib.RunError, match=r"method \"integrated_gradients\" then, \"saliency\" now; n_steps 4 "
                                              r"then, \(not set\) now"):
        attrib.run_dataset(tiny_model, ROWS[:2], method="saliency", out=out, chunk=4, progress=False)
    with pytest.raises(attrib.RunError, match=r"the prompts' content changed"):
        attrib.run_dataset(tiny_model, ROWS[:3], method="ig", out=out, chunk=4, progress=False, n_steps=4)
    assert len(read_index(out)) == 2


def test_a_folder_with_run_files_but_no_run_json_is_refused(tiny_model, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "shard-000000.safetensors").write_bytes(b"")
    with pytest.raises(attrib.RunError, match=r"holds shard-000000.safetensors but no run.json"):
        attrib.run_dataset(tiny_model, ROWS, method="saliency", out=out, progress=False)


def test_a_method_error_names_the_lines_of_its_chunk(tiny_model, tmp_path):
    rows = [*ROWS[:4], {"prompt": "w1 w2", "target": " w3", "contrast": " w4 w5"}]
    with pytest.raises(attrib.RunError, match=r"prompts given in Python, rows 5-5: contrast=' w4 w5' has 2 tokens "
                                              r"but the target has 1") as caught:
        attrib.run_dataset(tiny_model, rows, method="saliency", out=tmp_path / "run", chunk=4, progress=False)
    assert isinstance(caught.value.__cause__, attrib.TargetError)
    assert [r["id"] for r in json.loads("[" + ",".join(
        (tmp_path / "run" / "index.rank0.jsonl").read_text().splitlines()) + "]")] == [1, "second", 3, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="nope"), r"method 'nope' is not one a dataset run can call; pass one of integrated_gradients, "
                          r"saliency, .*ig \(= integrated_gradients\)"),
    (dict(method="ig", steps=3), r"integrated_gradients has no option 'steps' \(--steps\); its options are score, "
                                 r"baseline, n_steps"),
    (dict(method="ig", target=" w3"), r"target= is not a run option: target, contrast and the corrupted prompt are "
                                      r"given per line"),
    (dict(method="ig", baseline=torch.zeros(3)), r"baseline=tensor.* is not a JSON value"),
    (dict(method="ig", chunk=0), r"chunk=0 must be a positive int"),
    (dict(method="ig", dtype="float8"), r"dtype 'float8' is not one of auto, float32"),
    (dict(method="ig", device="gpu0"), r"device 'gpu0' is not a torch device; pass e\.g\. 'cpu' or 'cuda:1'"),
    (dict(method="ig", device="cuda:99"), r"device 'cuda:99' is not on this machine, which has \d+ CUDA device"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(attrib.RunError, match=message):
        attrib.run_dataset(None, ROWS, out=tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(attrib.RunError, match=r"out='.*file' is a file; pass the path of a folder"):
        attrib.run_dataset(None, ROWS, out=tmp_path / "file", progress=False)


def test_a_model_of_another_kind_is_refused_before_any_work(tiny_model, tmp_path):
    with pytest.raises(attrib.RunError, match=r"model= is a LlamaForCausalLM, not a model a run can use; pass an "
                                              r"attrib\.LanguageModel \(e\.g\. attrib\.LanguageModel\(hf_model, tokenizer\)\)"):
        attrib.run_dataset(tiny_model.module, ROWS, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_out_folder_that_cannot_be_made_is_one_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(attrib.RunError, match=r"cannot create the run's folder '.*file/run' \(Not a directory\); pass "
                                              r"an --out inside a folder that exists"):
        attrib.run_dataset(None, ROWS, out=tmp_path / "file" / "run", progress=False)
