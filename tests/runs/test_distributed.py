"""``torchrun --nproc-per-node 2 -m attrib run ...`` on the CPU (gloo): each rank computes its share of the
chunks, rank 0 merges, and the folder equals a one-process run's; a killed distributed run resumes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import attrib

from attrib.runs.distributed import World, device_for, world_from_env

from .conftest import RUN_OPTIONS, assert_same_run, env


def torchrun(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "attrib", *args]
    return subprocess.run(command, env=env(**extra_env), capture_output=True, text=True, timeout=240)


def test_two_processes_killed_and_resumed_give_what_one_gives(tiny_folder, prompts_file, reference, tmp_path):
    out = tmp_path / "run"
    options = [o for o in RUN_OPTIONS if o != "--no-progress"]          # the bars tell what each rank computed
    args = ["run", str(prompts_file), "--model", str(tiny_folder), "--out", str(out), *options]
    killed = torchrun(*args, ATTRIB_RUN_KILL_AT="shard:2")                 # each rank dies at its second shard
    assert killed.returncode != 0 and not (out / "index.jsonl").exists()
    assert (out / "index.rank0.jsonl").exists() or (out / "index.rank1.jsonl").exists()
    done = torchrun(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):            # six chunks of two prompts: chunks 0, 2, 4 on rank 0 and 1, 3, 5 on rank 1
        assert re.search(rf"integrated_gradients rank {rank}: 100%.*\| 6/6 ", done.stderr), done.stderr[-2000:]
    assert done.stdout.count("12 prompts:") == 1                          # rank 0 alone reports
    assert_same_run(out, reference)


def test_the_world_comes_from_torchrun_s_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == World(rank=3, size=4, local_rank=1)
    assert World(3, 4, 1).mine(10) == [3, 7]
    assert str(device_for(World(3, 4, 1))) in ("cpu", "cuda:1")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(attrib.RunError, match=r"RANK=4 and WORLD_SIZE=4 do not fit"):
        world_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(attrib.RunError, match=r"RANK='x' is not an int; torchrun sets it"):
        world_from_env()
