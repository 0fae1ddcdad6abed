"""The ``attrib`` command line: method options as flags, the same results as the Python call, and bad input as one
line on stderr with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import attrib
from attrib.runs.cli import main, split_options

from .conftest import ROWS, cli, index_lines


@pytest.mark.parametrize("argv, known, options", [
    (["p.jsonl", "--n-steps", "32", "--out", "d"], ["p.jsonl", "--out", "d"], {"n_steps": 32}),
    (["--baseline=pad", "p.jsonl", "--score", "logprob"], ["p.jsonl"], {"baseline": "pad", "score": "logprob"}),
    (["p.jsonl", "--components", '["resid", "mlp"]', "--epsilon", "-1e-6"], ["p.jsonl"],
     {"components": ["resid", "mlp"], "epsilon": -1e-6}),
    (["p.jsonl", "--per-token", "--chunk=4", "--qk-fix"], ["p.jsonl", "--chunk=4"],
     {"per_token": True, "qk_fix": True}),
    (["p.jsonl", "--layer", "resid_post.1", "--batch-size", "null", "--no-progress"], ["p.jsonl", "--no-progress"],
     {"layer": "resid_post.1", "batch_size": None}),
])
def test_method_options_are_flags_of_their_own(argv, known, options):
    assert split_options(argv) == (known, options)


def test_an_on_off_option_leaves_the_prompts_file_alone():
    assert split_options(["--per-token", "p.jsonl", "--out", "d"], ["per_token"]) == \
        (["p.jsonl", "--out", "d"], {"per_token": True})
    assert split_options(["--per-token", "false", "p.jsonl"], ["per_token"]) == (["p.jsonl"], {"per_token": False})


def test_a_switch_before_the_prompts_file_runs(tiny_folder, prompts, tmp_path, capsys):
    """``attrib run --per-token PROMPTS ...``: the file is the prompts, not --per-token's value."""
    out = tmp_path / "run"
    code = main(["run", "--per-token", str(prompts), "--model", str(tiny_folder), "--out", str(out), "--method", "ig",
                 "--n-steps", "2", "--chunk", "12", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["options"] == {"n_steps": 2, "per_token": True}


def test_the_cli_gives_what_the_python_call_gives(tiny_folder, tiny_model, prompts, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["run", str(prompts), "--model", str(tiny_folder), "--out", str(out), "--method", "deeplift",
                 "--baseline", "zeros", "--chunk", "5", "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out == f"12 prompts: {out}/index.jsonl\n"
    records = attrib.run_dataset(tiny_model, ROWS, method="deeplift", out=tmp_path / "py", chunk=5, progress=False,
                                 baseline="zeros")
    assert index_lines(out) == records


def test_the_report_command_writes_the_page(tiny_folder, prompts, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(prompts), "--model", str(tiny_folder), "--out", str(out), "--method", "saliency",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--output", str(tmp_path / "page.html"), "--examples", "3"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'page.html'}\n"
    assert "the first 3 of 12" in (tmp_path / "page.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], r"method 'nope' is not one a dataset run can call; pass one of integrated_gradients"),
    (["--n-step", "4"], r"integrated_gradients has no option 'n_step' \(--n-step\); its options are score"),
    (["--model", "/no/such/model"], r"--model '/no/such/model' is neither a folder nor a .gguf file"),
    (["--dtype", "half"], r"dtype 'half' is not one of auto, float32, float64, float16, bfloat16"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_folder, prompts, tmp_path, capsys, args, message):
    argv = ["run", str(prompts), "--out", str(tmp_path / "run"), *args]
    if "--model" not in args:
        argv += ["--model", str(tiny_folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attrib: error: ")
    assert re.search(message, err)


def test_a_bad_prompts_line_exits_2_naming_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "w1"}\n{"prompt": "w2", "target": " w3"\n')
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (f"attrib: error: {path}, line 2: not JSON (Expecting ',' delimiter); each line "
                                       'is one JSON object such as {"prompt": "The capital of France is", "target": '
                                       '" Paris"}.\n')


def test_a_restart_with_other_options_exits_2(tiny_folder, prompts, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["run", str(prompts), "--model", str(tiny_folder), "--out", str(out), "--method", "saliency",
            "--no-progress"]
    assert main(base) == 0
    assert main([*base, "--mode", "grad_x_input"]) == 2
    assert capsys.readouterr().err.endswith(
        f"attrib: error: {str(out)!r} was started with other options (mode (not set) then, \"grad_x_input\" now); "
        "to resume, run the same command as the first time, or pass another --out for a new run.\n")


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"attrib: error: {str(tmp_path)!r} has no index.jsonl: it is not the folder "
                                       "of a finished run; finish the run by running the same `attrib run` command "
                                       "again.\n")


def test_the_console_script_and_python_m_attrib():
    script = os.path.join(os.path.dirname(sys.executable), "attrib")
    assert os.path.isfile(script), "run `pip install -e .` to install the console script"
    done = subprocess.run([script, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "integrated_gradients (ig): --score --baseline --n-steps" in done.stdout
    assert "attribution_patching (atp):" in done.stdout
    done = cli("report", "/no/such/folder")
    assert (done.returncode, done.stderr) == (2, "attrib: error: '/no/such/folder' is not a folder; pass the --out "
                                                 "folder of a finished `attrib run`.\n")
