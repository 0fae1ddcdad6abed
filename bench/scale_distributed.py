"""``bench/scale.py --cases distributed`` (issue 10, goal 6: ``torchrun --nproc-per-node 4 -m attrib run ...`` ≥ 3.6×
one GPU): a dataset run in 1, 2, 4, ... processes, each started as the user starts it, timed from outside.

The bench writes a local Hugging Face folder (random weights of the SmolLM2-135M shape, ``bench/ig.py``'s ``build``;
``--tiny``: 2 layers, hidden 64; ``save_pretrained`` in bf16 on CUDA, float32 on the CPU) with a word-level
tokenizer made here (``"w7"`` is token 7, one token a word: nothing is downloaded, and every prompt is exactly
``--tokens`` tokens), and a JSONL file of ``--dataset-prompts`` random prompts (1,024 on CUDA, 32 on the CPU), each
with target token 42. Then it times, each in a subprocess (the repo first on ``PYTHONPATH``)::

    python -m attrib run prompts.jsonl --method ig --model FOLDER --out D1 --n-steps S --chunk C --dtype DT \
        --no-progress
    python -m torch.distributed.run --standalone --nproc-per-node N -m attrib run ... --out DN      # N = 2, 4, ...

N goes up to the visible GPUs on CUDA (one process a GPU, NCCL) and is 2 on the CPU (gloo), or ``--nprocs``. Each
process gets ``OMP_NUM_THREADS`` = CPU cores / N unless the variable is set. Columns:

- ``wall s``, ``prompts/s``, ``×``: the whole command, process start, imports and model load included (what a user
  waits for), and its speed-up over one process;
- ``startup s``: the same command on N prompts with ``--chunk 1`` (each process starts, loads the model and
  attributes one prompt), and the speed without it: P / (wall − startup) (``--no-startup``: not measured);
- ``steady prompts/s``: from the shards' modification times: for each process, its prompts after its first chunk
  over the time from its first shard to its last, summed over processes (needs two chunks a process);
- ``vs 1 process``: every index line (ids, tokens, targets) and every attribution of DN against D1: bit-identical,
  or the largest difference relative to the largest attribution.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512)
TARGET = 42
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def word_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer of ``vocab`` tokens: ``<pad>`` is 0 (also end of text), ``"w7"`` is 7."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, **{f"w{i}": i for i in range(1, vocab)}}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


def write_model(folder: Path, dtype: torch.dtype, tiny: bool = False) -> int:
    """A random-weight model and its tokenizer saved in ``folder``; returns the vocabulary size. Made on the CPU, so
    that this process takes no GPU memory from the runs it times."""
    import transformers

    from bench.ig import build

    if tiny:
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(**TINY, tie_word_embeddings=True, max_position_embeddings=512)
        hf = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    else:
        hf = build("smollm2", torch.device("cpu"), dtype)
    hf.config.pad_token_id = hf.config.eos_token_id = hf.config.bos_token_id = 0
    hf.save_pretrained(folder)
    word_tokenizer(hf.config.vocab_size).save_pretrained(folder)
    return hf.config.vocab_size


def write_prompts(path: Path, count: int, tokens: int, vocab: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(count):
            words = " ".join(f"w{rng.randrange(1, vocab)}" for _ in range(tokens))
            f.write(json.dumps({"prompt": words, "target": TARGET, "id": i}) + "\n")
    return path


def environment(nprocs: int) -> dict[str, str]:
    """The subprocesses' environment: the repo first on PYTHONPATH (an existing one kept after it), no torchrun
    variables of a surrounding run, NVLink multicast off, CPU threads shared among the processes."""
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    env.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def command(nprocs: int, prompts: Path, model: Path, out: Path, steps: int, chunk: int, dtype: str) -> list[str]:
    start = [sys.executable, "-m", "attrib"] if nprocs == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nprocs), "-m", "attrib"]
    return [*start, "run", str(prompts), "--method", "ig", "--model", str(model), "--out", str(out), "--n-steps",
            str(steps), "--chunk", str(chunk), "--dtype", dtype, "--no-progress"]


def timed_run(nprocs: int, *args: Any, timeout: float | None = None) -> float:
    """Seconds of one run in a subprocess; a failed run raises with the end of its output."""
    start = time.perf_counter()
    done = subprocess.run(command(nprocs, *args), env=environment(nprocs), capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{nprocs} process(es) exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def steady_rate(out: Path, nprocs: int) -> float | None:
    """Prompts per second while computing: per process, prompts after its first chunk over the time between its
    first and its last shard (chunk k is process k mod N's), summed over processes."""
    from attrib.runs import read_index

    by_chunk: dict[int, int] = {}
    for line in read_index(out):
        by_chunk[line["chunk"]] = by_chunk.get(line["chunk"], 0) + 1
    total = 0.0
    for rank in range(nprocs):
        mine = sorted((os.stat(out / f"shard-{k:06d}.safetensors").st_mtime, n)
                      for k, n in by_chunk.items() if k % nprocs == rank)
        if len(mine) < 2 or mine[-1][0] <= mine[0][0]:
            return None
        total += sum(n for _, n in mine[1:]) / (mine[-1][0] - mine[0][0])
    return total


def compare(got: Path, want: Path) -> tuple[bool, float]:
    """(bit-identical, largest |difference| / largest |attribution|) of two finished runs; a different index
    (ids, tokens, targets, order) raises."""
    from attrib.runs import load_results

    a, b = list(load_results(got)), list(load_results(want))
    keys = ("id", "tokens", "target", "chunk")
    if [[r[k] for k in keys] for r, _ in a] != [[r[k] for k in keys] for r, _ in b]:
        raise AssertionError(f"{got} and {want} hold different index lines")
    identical, diff, scale = True, 0.0, 0.0
    for (_, x), (_, y) in zip(a, b):
        identical &= torch.equal(x.values, y.values)
        diff = max(diff, float((x.values.double() - y.values.double()).abs().max()))
        scale = max(scale, float(y.values.double().abs().max()))
    return identical, diff / (scale or 1.0)


def process_counts(device: torch.device, given: str | None) -> list[int]:
    if given:
        return sorted({1, *(int(n) for n in given.split(","))})
    if device.type != "cuda":
        return [1, 2]
    gpus = torch.cuda.device_count()
    counts = [1] + [2 ** k for k in range(1, 8) if 2 ** k <= gpus]
    return counts + ([gpus] if gpus not in counts else [])


def measure_distributed(args: argparse.Namespace, device: torch.device) -> dict[int, dict[str, Any]]:
    """Print the table (module docstring); returns each process count's measurements."""
    cuda = device.type == "cuda"
    prompts = args.dataset_prompts or (1024 if cuda else 32)
    chunk = args.chunk or (64 if cuda else 8)
    dtype, dtype_name = (torch.bfloat16, "bfloat16") if cuda else (torch.float32, "float32")
    counts = process_counts(device, args.nprocs)
    if cuda and counts[-1] > torch.cuda.device_count():
        raise SystemExit(f"--nprocs {counts[-1]} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    work = Path(tempfile.mkdtemp(prefix="attrib-scale-distributed-"))
    rows: dict[int, dict[str, Any]] = {}
    try:
        start = time.perf_counter()
        vocab = write_model(work / "model", dtype, tiny=args.tiny)
        made = time.perf_counter() - start
        data = write_prompts(work / "prompts.jsonl", prompts, args.tokens, vocab)
        model = work / "model"
        for n in counts:
            row: dict[str, Any] = {}
            try:
                row["wall"] = timed_run(n, data, model, work / f"run{n}", args.steps, chunk, dtype_name)
                row["steady"] = steady_rate(work / f"run{n}", n)
                if not getattr(args, "no_startup", False):
                    one_each = write_prompts(work / f"startup{n}.jsonl", n, args.tokens, vocab, seed=1)
                    row["startup"] = timed_run(n, one_each, model, work / f"startup{n}", args.steps, 1, dtype_name)
                if n > 1:
                    row["same"] = compare(work / f"run{n}", work / "run1")
            except Exception as err:  # noqa: BLE001 - reported in the table, the other counts still run
                row["error"] = f"{type(err).__name__}: {err}" if not isinstance(err, RuntimeError) else str(err)
            rows[n] = row
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _table(rows, prompts, chunk, args, dtype_name, made, work)
    return rows


def _table(rows: dict[int, dict[str, Any]], prompts: int, chunk: int, args: argparse.Namespace, dtype: str,
           made: float, work: Path) -> None:
    shape = "tiny Llama (2 layers, hidden 64)" if args.tiny else "SmolLM2-135M shape"
    print(f"\n### distributed: `attrib run` IG, {prompts} prompts × {args.tokens} tokens, {args.steps} steps, "
          f"--chunk {chunk}, {shape}, {dtype}, one process a {'GPU' if dtype == 'bfloat16' else 'CPU share'}\n")
    print("| processes | wall s | prompts/s | × 1 process | startup s | prompts/s less startup | × 1 process | "
          "steady prompts/s | × 1 process | vs 1 process |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    one = rows.get(1, {})

    def speed(row: dict[str, Any], key: str) -> tuple[str, str]:
        value = {"wall": lambda r: prompts / r["wall"],
                 "less": lambda r: prompts / (r["wall"] - r["startup"]) if r["wall"] > r.get("startup", 1e9) else None,
                 "steady": lambda r: r.get("steady")}[key]
        mine = value(row) if "error" not in row else None
        base = value(one) if one and "error" not in one else None
        if mine is None:
            return "–", "–"
        return (f"{mine:.1f}" if mine >= 10 else f"{mine:.3g}"), (f"{mine / base:.2f}×" if base else "–")

    for n, row in rows.items():
        if "error" in row:
            first = row["error"].strip().splitlines()
            print(f"| {n} | failed: {first[0][:100].replace('|', '/')} | | | | | | | | |")
            continue
        same = "–" if n == 1 else ("bit-identical" if row["same"][0] else f"max difference {row['same'][1]:.1e} "
                                   "of the largest attribution")
        w, l, s = speed(row, "wall"), speed(row, "less"), speed(row, "steady")
        startup = f"{row['startup']:.1f}" if "startup" in row else "–"
        print(f"| {n} | {row['wall']:.1f} | {w[0]} | {w[1]} | {startup} | {l[0]} | {l[1]} | {s[0]} | "
              f"{s[1]} | {same} |")
    print(f"\nModel folder written in {made:.1f} s (not timed above). Goal 6: 4 processes (4 GPUs) ≥ 3.6× one "
          "process.", end=" ")
    if 4 in rows and "error" not in rows[4] and one and "error" not in one:
        got = {k: speed(rows[4], k)[1] for k in ("wall", "less", "steady")}
        print(f"Here: {got['wall']} wall, {got['less']} less startup, {got['steady']} steady.")
    else:
        print("Not measured here (no 4-process row).")
    for n, row in rows.items():
        if "error" in row:
            print(f"\n{n} process(es) failed:\n\n```\n{row['error'][-2000:]}\n```")
    if args.keep:
        print(f"\nRun folders kept in {work}.")
