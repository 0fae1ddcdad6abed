"""Attribution patching vs activation patching over every attention head × position (issue: patching).

Both methods score the same thing, the head outputs of an IOI prompt pair (denoise, logit difference):

- ``attribution``  ``attrib.methods.patching.attribution_patching``: one forward on each prompt, one backward
- ``activation``   ``attrib.methods.patching.activation_patching``: one patched row per head × position,
                   rows batched in the batch dimension (default chunk size)

Attribution patching is timed as the median of ``--reps`` calls after a warm call; activation patching, which
runs layers × heads × positions patched rows, once after a warm call on CUDA and once with no warm call on CPU
(the attribution warm call has already traced the model). ``pearson`` is the correlation of the two score
tensors (the approximation's quality; random weights make it lower than on the trained demo model).

Run from the repo root (attrib need not be installed)::

    python bench/patching.py --device cpu                      # the demo model (SmolLM2-135M-Instruct), float32
    python bench/patching.py --device cuda                     # + random-weight SmolLM2-135M shape in bf16

Goal: attribution >= 100x faster than activation patching on the demo model.

``--cases pairs`` (issue 14) times eight IOI pairs (``attrib.demo.ioi_pairs``; on CUDA random weights in
SmolLM2-135M's shape, float32, and eight random pairs) two ways, each method: a loop of eight single-pair
calls, and one call on the lists. Attribution patching scores every component at every position, activation
patching every head at the last position, once as it runs by default (each patched row runs the last position
only, on the receiving prompt's cached keys and values: ``attrib.methods.prefix``) and once with every position
(``reuse_prefix=False``, the code before). ``max |diff|`` compares the batch's per-pair scores with the loop's.
Goal: the batch >= 5x faster than the loop, equal results.

``--cases compiled`` (issue 10, the compiled fast path) times activation patching of every default component
(resid, attn, mlp, heads) at every position of the random-weight pair, traced (``reuse_prefix=False``: every
position, as the compiled passes) against ``compile=True``
(``batch_size=None``: the traced calls settle the plan first). Warm-up = the first compiled call's seconds above
the median compiled call's; ``max |diff|`` relative to the largest |score| (bf16).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

import attrib  # noqa: E402
from attrib.demo import IOI_CLEAN as CLEAN, IOI_CORRUPTED as CORRUPTED  # noqa: E402
from attrib.methods.patching import activation_patching, attribution_patching  # noqa: E402
from bench.harness import sync  # noqa: E402



def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return (time.perf_counter() - start) * 1000, out


def demo_case(device: torch.device) -> tuple[attrib.Model, Any, Any, dict]:
    model = attrib.load_demo_model(device=str(device))
    return model, CLEAN, CORRUPTED, dict(target=" Mary", contrast=" John")


def random_smollm2(device: torch.device, n_tokens: int) -> tuple[attrib.Model, Any, Any, dict]:
    """Random weights in SmolLM2-135M's shape, bf16; an IOI-like pair of random token ids (2 positions differ)."""
    config = transformers.LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                      num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                      max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=0,
                                      eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16).eval()
    clean = torch.randint(1, config.vocab_size, (1, n_tokens), device=device)
    corrupted = clean.clone()
    corrupted[0, [1, n_tokens - 5]] = corrupted[0, [n_tokens - 5, 1]]
    return attrib.LanguageModel(hf), clean, corrupted, dict(target=11, contrast=12)


def run_case(name: str, build: Callable[[], tuple], device: torch.device, reps: int) -> dict:
    model, clean, corrupted, kw = build()
    kw = dict(kw, components="heads")
    attribution_patching(model, clean, corrupted, **kw)                # warm call (also learns the module order)
    times = []
    for _ in range(reps):
        ms, approx = timed(lambda: attribution_patching(model, clean, corrupted, **kw), device)
        times.append(ms)
    if device.type == "cuda":
        activation_patching(model, clean, corrupted, **kw)
    act_ms, exact = timed(lambda: activation_patching(model, clean, corrupted, **kw), device)
    x, y = approx.scores["heads"].flatten().float(), exact.scores["heads"].flatten().float()
    layers, heads, positions = exact.scores["heads"].shape
    return {"case": name, "patches": f"{layers}×{heads}×{positions} = {layers * heads * positions}",
            "attr": statistics.median(times), "act": act_ms, "rows": exact.info.get("batch_size"),
            "forwards": exact.info.get("forwards"), "dtype": str(model.dtype).replace("torch.", ""),
            "pearson": torch.corrcoef(torch.stack([x, y]))[0, 1].item()}


def ioi_case(device: torch.device) -> tuple[attrib.Model, list, list, list, list]:
    from attrib.demo import ioi_pairs

    return (attrib.load_demo_model(device=str(device)), *ioi_pairs())


def random_pairs(device: torch.device, n_tokens: int, n_pairs: int = 8) -> tuple[attrib.Model, list, list, list, list]:
    """Random weights in SmolLM2-135M's shape, float32; ``n_pairs`` pairs of random ids, two positions swapped."""
    model, _, _, _ = random_smollm2(device, n_tokens)
    model.module.float()
    vocab = model.module.config.vocab_size
    clean = torch.randint(1, vocab, (n_pairs, n_tokens), device=device)
    corrupted = clean.clone()
    corrupted[:, [1, n_tokens - 5]] = corrupted[:, [n_tokens - 5, 1]]
    return model, clean, corrupted, [[11 + i] for i in range(n_pairs)], [[12 + i] for i in range(n_pairs)]


def pairs_rows(name: str, build: Callable[[], tuple], device: torch.device, reps: int) -> list[dict]:
    model, clean, corrupted, answers, others = build()
    rows, batches = [], {}
    for method, fn, kw in (("attribution", attribution_patching, {}),
                           ("activation", activation_patching, dict(components="heads", positions=-1)),
                           ("activation, full forwards", activation_patching,
                            dict(components="heads", positions=-1, reuse_prefix=False))):
        def loop() -> list:
            return [fn(model, clean[i:i + 1] if isinstance(clean, torch.Tensor) else clean[i],
                       corrupted[i:i + 1] if isinstance(corrupted, torch.Tensor) else corrupted[i],
                       target=answers[i][0] if isinstance(answers[i], list) else answers[i],
                       contrast=others[i][0] if isinstance(others[i], list) else others[i], **kw)
                    for i in range(len(answers))]

        def batch() -> Any:
            return fn(model, clean, corrupted, target=answers, contrast=others, **kw)

        n = reps if method == "attribution" or device.type == "cuda" else 1
        timings: dict[str, list[float]] = {"loop": [], "batch": []}
        outs: dict[str, Any] = {"loop": loop(), "batch": batch()}          # warm calls
        for _ in range(n):
            for way, call in (("loop", loop), ("batch", batch)):
                ms, outs[way] = timed(call, device)
                timings[way].append(ms)
        diff = max(float((outs["batch"].per_pair[c][i] - single.scores[c]).abs().nan_to_num().max())
                   for i, single in enumerate(outs["loop"]) for c in single.scores)
        scale = max(float(single.scores[c].abs().max()) for single in outs["loop"] for c in single.scores)
        loop_ms, batch_ms = statistics.median(timings["loop"]), statistics.median(timings["batch"])
        batches[method] = outs["batch"]
        rows.append({"case": name, "method": method, "what": "every component × position" if not kw else
                     "every head, last position", "pairs": len(answers), "dtype": str(model.dtype).replace("torch.", ""),
                     "loop": loop_ms, "batch": batch_ms, "diff": diff, "scale": scale, "reps": n})
    fast, full = batches["activation"], batches["activation, full forwards"]
    gap = max(float((fast.per_pair[c] - full.per_pair[c]).abs().nan_to_num().max()) for c in fast.per_pair)
    print(f"{name}: activation patching with the cached prefix against full forwards: max |diff| {gap:.1e}, "
          f"prefix_reuse={fast.info['prefix_reuse']}", file=sys.stderr)
    return rows


def compiled_rows(build: Callable[[], tuple], device: torch.device, reps: int) -> list[dict]:
    """Activation patching of the default components, traced vs compile=True, side by side."""
    model, clean, corrupted, kw = build()
    kw = dict(kw, components=("resid", "attn", "mlp", "heads"))
    # traced with every position, as the compiled passes run (the cached prefix has its own plan)
    traced = [timed(lambda: activation_patching(model, clean, corrupted, reuse_prefix=False, **kw), device)
              for _ in range(1 + reps)]
    fast = [timed(lambda: activation_patching(model, clean, corrupted, compile=True, **kw), device)
            for _ in range(1 + reps)]
    ref, got = traced[-1][1], fast[-1][1]
    scale = max(float(ref.scores[c].abs().max()) for c in ref.scores)
    diff = max(float((got.scores[c] - ref.scores[c]).abs().max()) for c in ref.scores)
    patches = sum(ref.scores[c].numel() for c in ref.scores)
    rows = []
    for name, runs in (("traced", traced), ("compile=True", fast)):
        median = statistics.median(ms for ms, _ in runs[1:])
        rows.append({"contestant": name, "patches": patches, "ms": median, "first": runs[0][0],
                     "warm": sum(max(0.0, ms - median) for ms, _ in runs) / 1e3, "rows": runs[-1][1].info.get(
                         "batch_size"), "forwards": runs[-1][1].info.get("forwards"),
                     "diff": diff / scale if name != "traced" else None, "dtype": str(model.dtype)[6:]})
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cases", default=None, help="comma-separated: demo, smollm2-random, pairs, pairs-random, compiled "
                        "(default: demo on CPU; demo (when its weights are installed) and smollm2-random on CUDA)")
    parser.add_argument("--reps", type=int, default=5, help="timed attribution-patching calls (median)")
    parser.add_argument("--tokens", type=int, default=14, help="prompt length of the random-weight case")
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = args.cases.split(",") if args.cases else (["demo"] if device.type == "cpu" else ["demo", "smollm2-random"])
    builders = {"demo": lambda: demo_case(device), "smollm2-random": lambda: random_smollm2(device, args.tokens)}
    pair_builders = {"pairs": lambda: ioi_case(device), "pairs-random": lambda: random_pairs(device, args.tokens)}
    rows, pair_rows, compiled = [], [], []
    for name in cases:
        try:
            if name == "compiled":
                compiled.extend(compiled_rows(lambda: random_smollm2(device, args.tokens), device, args.reps))
                continue
            if name in pair_builders:
                pair_rows.extend(pairs_rows(name, pair_builders[name], device, args.reps))
                continue
            rows.append(run_case(name, builders[name], device, args.reps))
        except Exception as err:  # noqa: BLE001 - e.g. the demo weights not installed on a GPU host
            if args.cases:
                raise
            print(f"skipped {name}: {type(err).__name__}: {err}", file=sys.stderr)
    print(f"### {device_name(device)} — {datetime.date.today().isoformat()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, Python {platform.python_version()}\n")
    if rows:
        print("| case | dtype | head × position patches | attribution ms | activation ms | ratio | "
              "activation rows/forward × forwards | pearson |")
        print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['dtype']} | {r['patches']} | {r['attr']:.1f} | {r['act']:.1f} | "
              f"**{r['act'] / r['attr']:.0f}×** | {r['rows']} × {r['forwards']} | {r['pearson']:.3f} |")
    if pair_rows:
        print("\n| case | method | patches | pairs | dtype | loop of single pairs ms | one batch ms | speed-up | "
              "max |diff| (largest |score|) | timed calls |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for r in pair_rows:
        print(f"| {r['case']} | {r['method']} | {r['what']} | {r['pairs']} | {r['dtype']} | {r['loop']:.1f} | "
              f"{r['batch']:.1f} | **{r['loop'] / r['batch']:.1f}×** | {r['diff']:.1e} ({r['scale']:.2f}) | "
              f"{r['reps']} |")
    if compiled:
        print("\n| activation patching, every component | dtype | patches | ms (median) | first call ms | warm-up s | "
              "rows/pass × passes | max |diff| / max |score| |")
        print("|---|---|---|---|---|---|---|---|")
        base = compiled[0]["ms"]
    for r in compiled:
        diff = "–" if r["diff"] is None else f"{r['diff']:.1e}"
        print(f"| {r['contestant']} | {r['dtype']} | {r['patches']} | {r['ms']:.1f} (**{base / r['ms']:.2f}×**) | "
              f"{r['first']:.0f} | {r['warm']:.1f} | {r['rows']} × {r['forwards']} | {diff} |")


if __name__ == "__main__":
    main()
