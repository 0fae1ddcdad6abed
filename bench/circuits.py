"""Cost of edge attribution patching, EAP-IG and circuit evaluation, against one forward + backward (issue 12).

Each row is measured in one run, side by side, median of ``--reps`` calls after a warm call:

- ``forward+backward``  the model's forward on the corrupted prompts and the backward of the metric to the
                        input embeddings (plain PyTorch, no attrib): the unit of the goals
- ``eap``               ``attrib.edge_attribution_patching`` over every edge (two no-grad forwards, one forward
                        with the graph, one backward, the receivers' vector-Jacobian products)
- ``eap-ig``            the same with ``--steps`` integration steps
- ``faithfulness``      ``attrib.circuit_faithfulness`` at five circuit sizes (per size and pair: one patched row)

Run from the repo root::

    python bench/circuits.py --device cpu                 # the demo model (SmolLM2-135M), IOI pairs, float32
    python bench/circuits.py --device cuda                # random weights in SmolLM2-135M's shape, float32

Goals: EAP over every edge ≤ 3× one forward + backward; EAP-IG with m steps ≤ (m + 2)×.
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
from bench.harness import sync  # noqa: E402
from bench.patching import device_name, random_pairs  # noqa: E402


def timed(fn: Callable[[], Any], device: torch.device, reps: int) -> tuple[float, Any]:
    out = fn()                                                            # warm call
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=14, help="prompt length of the random-weight case (CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        from attrib.demo import ioi_pairs

        model = attrib.load_demo_model(device="cpu")
        clean, corrupted, answers, others = (part[:args.pairs] for part in ioi_pairs())
        enc = model.tokenize(corrupted)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        case = f"demo model, {args.pairs} IOI pairs × 14 tokens"
    else:
        model, clean, corrupted, answers, others = random_pairs(device, args.tokens, args.pairs)
        ids, mask = corrupted, torch.ones_like(corrupted)
        case = f"SmolLM2-135M shape, random weights, {args.pairs} pairs × {args.tokens} tokens"
    kw = dict(target=answers, contrast=others)
    hf = model.module
    answer = torch.tensor([model.tokenizer(a)["input_ids"][0] if isinstance(a, str) else a[0] for a in answers],
                          device=device)

    def forward_backward() -> None:
        embeds = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = hf(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]
        torch.autograd.grad(logits[torch.arange(len(answer)), answer].sum(), embeds)

    unit, _ = timed(forward_backward, device, args.reps)
    eap_ms, graph = timed(lambda: attrib.edge_attribution_patching(model, clean, corrupted, **kw), device, args.reps)
    ig_ms, _ = timed(lambda: attrib.edge_attribution_patching(model, clean, corrupted, method="eap-ig",
                                                              n_steps=args.steps, **kw), device, args.reps)
    sizes = [100, 1000, 5000, 20000, graph.n_edges]
    faith_ms, _ = timed(lambda: attrib.circuit_faithfulness(model, graph, clean, corrupted, sizes=sizes, **kw),
                        device, 1)
    print(f"### {device_name(device)} — {datetime.date.today().isoformat()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, Python {platform.python_version()}\n")
    print(f"{case}, {graph.n_edges} edges, {str(model.dtype).replace('torch.', '')}\n")
    print("| what | ms | × forward+backward | goal |")
    print("|---|---|---|---|")
    print(f"| forward + backward (plain PyTorch) | {unit:.1f} | 1.0× | – |")
    print(f"| EAP, every edge | {eap_ms:.1f} | **{eap_ms / unit:.1f}×** | ≤ 3× |")
    print(f"| EAP-IG, {args.steps} steps | {ig_ms:.1f} | **{ig_ms / unit:.1f}×** | ≤ {args.steps + 2}× |")
    print(f"| circuit faithfulness, {len(sizes)} sizes × {args.pairs} pairs | {faith_ms:.1f} | "
          f"{faith_ms / unit:.1f}× | – |")


if __name__ == "__main__":
    main()
