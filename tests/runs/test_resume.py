"""A run killed with SIGKILL at any step and started again with the same command finishes with every id once and
the values of an uninterrupted run. The CLI runs as a subprocess; kills come from outside (when a file appears)
and from the kill points between the write steps (``ATTRIB_RUN_KILL_AT``)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import attrib
from attrib.results import Attribution
from attrib.runs.dataset import chunked, examples_from
from attrib.runs.store import consolidate, write_chunk

from .conftest import ROWS, RUN_OPTIONS, assert_same_run, cli, env, index_lines

KILLED = -signal.SIGKILL


def run_args(prompts, model, out) -> list[str]:
    return ["run", str(prompts), "--model", str(model), "--out", str(out), *RUN_OPTIONS]


def test_the_reference_equals_direct_calls(reference, tiny_model):
    """What the resumed runs are compared with is itself right: integrated gradients called prompt by prompt."""
    for line, row in zip(index_lines(reference), ROWS):
        target = row.get("target")
        want = attrib.integrated_gradients(tiny_model, row["prompt"], target=target[0] if isinstance(target, list)
                                           else target, contrast=row.get("contrast"), n_steps=64)
        assert line["tokens"] == want.tokens
        torch.testing.assert_close(torch.tensor(line["scores"], dtype=torch.float64), want.scores, rtol=1e-7,
                                   atol=1e-10)


def lines_in(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_from_outside_and_at_every_write_step_then_resumed(tiny_folder, prompts_file, reference, tmp_path):
    """One run killed four times: from outside as soon as its first shard appears (the process is then anywhere in
    its next chunk), then at each step of the write order; started again each time with the same command."""
    out = tmp_path / "run"
    index = out / "index.rank0.jsonl"
    args = run_args(prompts_file, tiny_folder, out)
    kill_when(args, lambda: (out / "shard-000000.safetensors").exists())
    assert not (out / "index.jsonl").exists()
    before = lines_in(index)
    # the temporary shard of this process's 2nd chunk is written, not yet renamed
    assert cli(*args, ATTRIB_RUN_KILL_AT="tmp:2").returncode == KILLED
    assert any(p.name.startswith(".tmp-") for p in out.iterdir()) and lines_in(index) == before // 2 * 2 + 2
    # the 2nd shard of this process is in place, its index lines are not
    shards = {p.name for p in out.glob("shard-*")}
    assert cli(*args, ATTRIB_RUN_KILL_AT="shard:2").returncode == KILLED
    assert len({p.name for p in out.glob("shard-*")} - shards) == 2 and lines_in(index) == before // 2 * 2 + 4
    # half of the 1st chunk's lines are written: a torn last line
    assert cli(*args, ATTRIB_RUN_KILL_AT="torn:1").returncode == KILLED
    assert not index.read_bytes().endswith(b"\n") and not (out / "index.jsonl").exists()
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert_same_run(out, reference)


def index_lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_when(args: list[str], ready) -> None:
    """Start the CLI, SIGKILL it as soon as ``ready()`` holds, and check that it died mid-run."""
    proc = subprocess.Popen([sys.executable, "-m", "attrib", *args], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        code = proc.wait()
    assert code == KILLED, "the run ended before it could be killed"


# -- the recovery itself, on folders laid out by hand ---------------------------------------------------------------

def result(i: int) -> Attribution:
    return Attribution(["a", " b"], torch.tensor([float(i), -1.0]), torch.full((2, 3), float(i)), None, " c",
                       "saliency")


@pytest.fixture
def laid_out(tmp_path):
    """Three chunks of two: chunk 0 complete in rank 0's file, chunk 1 complete in rank 1's file, chunk 2's shard
    written with one of its two lines."""
    chunks = chunked(examples_from([f"w{i}" for i in range(6)]), 2)
    write_chunk(str(tmp_path), 0, 0, chunks[0], [result(0), result(1)])
    write_chunk(str(tmp_path), 1, 1, chunks[1], [result(2), result(3)])
    write_chunk(str(tmp_path), 0, 2, chunks[2], [result(4), result(5)])
    lines = (tmp_path / "index.rank0.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "index.rank0.jsonl").write_text("".join(lines[:3]))
    return tmp_path, chunks


def test_recovery_keeps_complete_chunks_and_removes_the_rest(laid_out):
    folder, chunks = laid_out
    (folder / ".tmp-1-abc-shard-000004.safetensors").write_bytes(b"partial")
    assert consolidate(str(folder), chunks, "index.rank0.jsonl", require_all=False) == {0, 1}
    assert sorted(p.name for p in folder.iterdir()) == ["index.rank0.jsonl", "shard-000000.safetensors",
                                                        "shard-000001.safetensors"]
    assert [line["id"] for line in index_lines_of(folder / "index.rank0.jsonl")] == [1, 2, 3, 4]


def test_recovery_drops_a_torn_line_and_counts_each_chunk_once(laid_out):
    folder, chunks = laid_out
    merged = (folder / "index.rank1.jsonl").read_text()
    (folder / "index.jsonl").write_text(merged)                   # a merge killed before it removed the rank files
    with open(folder / "index.rank1.jsonl", "a") as f:
        f.write('{"id": 5, "chunk": 2, "sha')
    assert consolidate(str(folder), chunks, "index.rank0.jsonl", require_all=False) == {0, 1}
    assert [line["id"] for line in index_lines_of(folder / "index.rank0.jsonl")] == [1, 2, 3, 4]
    assert not (folder / "index.jsonl").exists() and not (folder / "index.rank1.jsonl").exists()


def test_a_line_changed_by_hand_is_refused(laid_out):
    folder, chunks = laid_out
    text = (folder / "index.rank0.jsonl").read_text().splitlines(keepends=True)
    (folder / "index.rank0.jsonl").write_text("not json\n" + "".join(text))
    with pytest.raises(attrib.RunError, match=r"index.rank0.jsonl, line 1, is not JSON, so the file was not written "
                                              r"by attrib run alone"):
        consolidate(str(folder), chunks, "index.rank0.jsonl", require_all=False)


def test_the_merge_needs_every_chunk(laid_out):
    folder, chunks = laid_out
    with pytest.raises(attrib.RunError, match=r"chunks \[2\] of .* have no complete index lines"):
        consolidate(str(folder), chunks, "index.jsonl", require_all=True)


def test_killed_files_never_hold_part_of_a_write(tmp_path):
    """The building blocks: an atomic write killed before its rename leaves the old content."""
    path = tmp_path / "f.json"
    path.write_text("old")
    script = f"from attrib.runs.disk import write_atomic; write_atomic({str(path)!r}, b'new', 'tmp')"
    code = subprocess.run([sys.executable, "-c", script], env=env(ATTRIB_RUN_KILL_AT="tmp:1")).returncode
    assert code == KILLED and path.read_text() == "old"
    assert [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == [b"new"]


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk in the middle of an atomic write (e.g. the report written to --output elsewhere): the error
    reaches the caller, the old content stays and no ``.tmp-*`` file is left in the folder."""
    from attrib.runs import disk

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "report.html"
    path.write_text("old")
    monkeypatch.setattr(disk, "_write_all", full)
    with pytest.raises(OSError, match="No space left"):
        disk.write_atomic(str(path), b"new page")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"] and path.read_text() == "old"
