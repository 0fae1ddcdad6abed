"""GPU memory after a failed pass: what an out-of-memory error leaves allocated, and how IG's halving settles.

Cases (random weights, bf16, one GPU; nothing is downloaded):

- ``llama8b``: the Llama-3-8B shape (hidden 4096, 32 layers, 32/8 heads, MLP 14336, vocab 128256), three
  calls in a row on one model, ``attrib.integrated_gradients(lm, ids, target=42, n_steps=32)``:
  256 tokens with ``batch_size=34``; 1,024 tokens with ``batch_size=None`` (all 34 rows at once, halved on
  out-of-memory); 8,192 tokens with ``batch_size=1``. Each row of the table gives the result, the peak, the
  memory allocated while the caller still holds the exception (for a call that raised), right after the
  call, and after ``gc.collect()``; the model's own parameters are the floor.
- ``smollm2-256``: the SmolLM2-135M shape, 256 prompts of 32 tokens, 32 steps (34 rows a prompt: 8,704
  rows), ``batch_size=None``: the rows per pass the halving settles on in the first call, and its time.

``--code DIR`` imports attrib from ``DIR`` instead (e.g. an export of an older commit, to compare before and
after a change in one lease). Run: ``python bench/failed_pass.py --cases llama8b,smollm2-256``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import torch

GiB = 2**30


def llama(cfg: dict, device: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**cfg, max_position_embeddings=16384))
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False)
SMOLLM2 = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)


def measured(attrib, lm, ids: torch.Tensor, batch_size: int | None) -> dict:
    torch.cuda.reset_peak_memory_stats()
    row = {"tokens": ids.shape[1], "batch_size": batch_size, "held": "–"}
    t0 = time.perf_counter()
    try:
        attrib.integrated_gradients(lm, ids, target=42, n_steps=32, batch_size=batch_size)
        torch.cuda.synchronize()
        row["result"] = f"ok, {time.perf_counter() - t0:.1f} s"
    except Exception as err:  # noqa: BLE001 - the table reports it
        row["result"] = f"{type(err).__name__} after {time.perf_counter() - t0:.1f} s"
        row["held"] = f"{torch.cuda.memory_allocated() / GiB:.1f}"
        del err
    row["peak"] = f"{torch.cuda.max_memory_allocated() / GiB:.1f}"
    row["after"] = f"{torch.cuda.memory_allocated() / GiB:.1f}"
    gc.collect()
    row["after gc"] = f"{torch.cuda.memory_allocated() / GiB:.1f}"
    return row


def case_llama8b(attrib) -> None:
    model = llama(LLAMA_8B, "cuda")
    lm = attrib.LanguageModel(model)
    own = torch.cuda.memory_allocated() / GiB
    print(f"\nLlama-3-8B shape, bf16, parameters {own:.1f} GiB (gc enabled as usual)\n")
    print("| call | result | peak GiB | allocated while the exception is held | right after | after gc.collect() |")
    print("|---|---|---|---|---|---|")
    for tokens, batch in ((256, 34), (1024, None), (8192, 1)):
        ids = torch.randint(1, 128000, (1, tokens), device="cuda")
        r = measured(attrib, lm, ids, batch)
        print(f"| {tokens:,} tokens, batch_size={batch} | {r['result']} | {r['peak']} | {r['held']} | {r['after']} "
              f"| {r['after gc']} |", flush=True)
    from attrib.methods import batching

    print(f"\nremembered rows per pass: {dict(batching._fitted.get(model, {}))}")
    del lm, model
    gc.collect()
    torch.cuda.empty_cache()


def case_smollm2(attrib) -> None:
    from attrib.methods import batching

    model = llama(SMOLLM2, "cuda")
    lm = attrib.LanguageModel(model)
    ids = torch.randint(1, 49152, (256, 32), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    attrib.integrated_gradients(lm, ids, target=42, n_steps=32)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    rows = dict(batching._fitted.get(model, {}))
    peak = torch.cuda.max_memory_allocated() / GiB
    t0 = time.perf_counter()
    attrib.integrated_gradients(lm, ids, target=42, n_steps=32)
    torch.cuda.synchronize()
    second = time.perf_counter() - t0
    print(f"\nSmolLM2-135M shape, 256 prompts × 32 tokens, 32 steps (8,704 rows), batch_size=None: rows per pass "
          f"after the first call {list(rows.values())}, peak {peak:.1f} GiB, first call {first:.1f} s, "
          f"second call {second:.1f} s ({256 / second:.1f} prompts/s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="llama8b,smollm2-256")
    parser.add_argument("--code", default=None, help="import attrib from this folder")
    args = parser.parse_args()
    if args.code:
        sys.path.insert(0, args.code)
    import attrib

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from harness import header

    print(f"attrib from {attrib.__file__}")
    print(header(torch.device("cuda"), 1, 0, {}))
    for case in args.cases.split(","):
        {"llama8b": case_llama8b, "smollm2-256": case_smollm2}[case](attrib)


if __name__ == "__main__":
    main()
