"""Cost of the rule methods against one plain gradient (issue 11): LRP (AttnLRP, CP-LRP) and GIM are one forward
and one backward with some modules' backward replaced, so the goal is ≤ 1.2× one plain gradient.

Each row is measured in one run, side by side (``bench.harness.time_contestants``: shuffled order, median):

- ``gradient``        the model's forward and the backward of the target logits to the input embeddings, plain
                      PyTorch (no attrib): the unit of the goal
- ``grad × input``    ``attrib.saliency(mode="grad_x_input")``: the same through attrib (its own overhead)
- ``attnlrp``, ``cp-lrp``  ``attrib.lrp`` with that composite
- ``gim``             ``attrib.gim`` (its softmax temperature needs the probed eager attention)
- ``gim, no T``       ``attrib.gim(softmax_temperature=None)``: norms and q/k/v only (any attention)

``--lxt PYTHON`` also times LXT 2.1's AttnLRP (its own environment, transformers 4.x) on the same weights against
a plain gradient in that environment (``bench/rules_lxt.py``), so the two ratios can be read side by side.

    python bench/rules.py --device cpu                 # the demo model (SmolLM2-135M), float32
    python bench/rules.py --device cuda                # random weights in SmolLM2-135M's shape
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

import attrib  # noqa: E402
from bench.harness import cell, header, paired, ratio, time_contestants  # noqa: E402


def model_for(device: torch.device) -> attrib.LanguageModel:
    if device.type == "cpu":
        return attrib.load_demo_model()
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                      tie_word_embeddings=True, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).to(device).eval()
    return attrib.LanguageModel(hf)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lxt", default=None, help="the python of an environment with LXT 2.1 (e.g. .venv-lxt)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = model_for(device)
    hf = model.module
    print(header(device, args.reps, args.warmup, {}))
    rows = []
    for n in args.tokens:
        torch.manual_seed(1)
        ids = torch.randint(100, 10000, (args.batch, n), device=device)
        target = [int(t) for t in torch.randint(100, 10000, (args.batch,))]
        tid = torch.tensor(target, device=device)
        embed = hf.get_input_embeddings()

        def gradient() -> torch.Tensor:
            x = embed(ids).detach().requires_grad_(True)
            logits = hf(inputs_embeds=x).logits
            (g,) = torch.autograd.grad(logits[torch.arange(len(ids)), -1, tid].sum(), x)
            return g

        runs = {
            "gradient": gradient,
            "grad × input": lambda: attrib.saliency(model, ids, target=target, mode="grad_x_input"),
            "attnlrp": lambda: attrib.lrp(model, ids, target=target, rules="attnlrp"),
            "cp-lrp": lambda: attrib.lrp(model, ids, target=target, rules="cp-lrp"),
            "gim": lambda: attrib.gim(model, ids, target=target),
            "gim, no T": lambda: attrib.gim(model, ids, target=target, softmax_temperature=None),
        }
        raw: dict[str, list[float]] = {}
        medians, failed, _ = time_contestants(runs, device, args.reps, args.warmup, raw=raw)
        for name in runs:
            pair = paired(raw, name, "gradient") if name not in failed else None
            within = f"{pair[0]:.2f}× [{pair[1]:.2f}, {pair[2]:.2f}]" if pair else ratio(medians, name, "gradient")
            rows.append((f"{args.batch}×{n}", name, cell(medians, failed, name), within))
        if args.lxt:
            rows += lxt_rows(args, hf, n)
    print("\n| prompts × tokens | method | ms | × gradient (paired median [95% CI]) |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


def lxt_rows(args: argparse.Namespace, hf: torch.nn.Module, n: int) -> list[tuple[str, ...]]:
    """LXT's AttnLRP and a plain gradient, timed in LXT's environment on the same weights (CPU)."""
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder, safe_serialization=True)
        out = Path(folder) / "times.json"
        proc = subprocess.run([args.lxt, str(Path(__file__).with_name("rules_lxt.py")), folder, str(out),
                               str(args.batch), str(n), str(args.reps), str(args.warmup)], capture_output=True,
                              text=True, timeout=3000)
        if proc.returncode:
            return [(f"{args.batch}×{n}", "LXT attnlrp", "failed: " + proc.stderr.strip().splitlines()[-1][:80], "")]
        times = json.loads(out.read_text())
    return [(f"{args.batch}×{n}", "LXT: gradient (its env)", f"{times['gradient']:.1f}", "1.00×"),
            (f"{args.batch}×{n}", "LXT: attnlrp (its env)", f"{times['attnlrp']:.1f}",
             f"{times['attnlrp'] / times['gradient']:.2f}×")]


if __name__ == "__main__":
    sys.exit(main())
