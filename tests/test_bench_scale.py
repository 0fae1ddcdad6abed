"""``bench/scale.py --cases distributed`` at a tiny size: one process and two (gloo, on the CPU) attribute the same
prompts, and the bench finds the two runs' results equal."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench.scale_distributed import measure_distributed


@pytest.mark.slow
def test_the_distributed_case_runs_one_and_two_processes_and_their_results_match(capsys):
    args = argparse.Namespace(dataset_prompts=4, chunk=1, tokens=4, steps=2, tiny=True, nprocs="2", keep=False,
                              no_startup=True)
    rows = measure_distributed(args, torch.device("cpu"))
    table = capsys.readouterr().out
    assert sorted(rows) == [1, 2]
    assert all("error" not in row for row in rows.values()), rows
    identical, diff = rows[2]["same"]
    assert identical or diff < 1e-5, diff
    assert all(rows[n]["steady"] > 0 for n in (1, 2))          # two chunks a process: a steady rate each
    assert "| 1 | " in table and "| 2 | " in table and "failed" not in table
