"""Edge attribution patching, attrib against TransformerLens 4.3 on the same model (issue 12).

A GPT-2-small-shaped model with random weights (12 layers × 12 heads, 768 wide; saved as safetensors), one or
more random prompt pairs (two positions swapped), float32, CPU. attrib runs here; TransformerLens runs in its own
environment (``make oracle-env``: ``.venv-tl``) on the saved weights, timed inside that process after a warm call.
Both score every edge at every position (TransformerLens' nodes are per position; attrib's per-position scores
are asked for with ``per_position=True``). Run ``python bench/circuits_tl.py [--pairs 1] [--tokens 14]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

import attrib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMER = """
import sys, time, json, torch
sys.path.insert(0, {oracles!r})
from transformerlens_eap import boot, EdgeAttributionConfig, attribution_patch, AutoModelForCausalLM, PreTrainedTokenizerFast
hf = AutoModelForCausalLM.from_pretrained({folder!r}, attn_implementation="eager").eval()
bridge = boot({folder!r}, hf_model=hf, tokenizer=PreTrainedTokenizerFast.from_pretrained({folder!r}), device="cpu")
bridge.eval()
clean, corrupt = torch.tensor({clean}), torch.tensor({corrupt})
metric = lambda logits: logits[0, -1, 11] - logits[0, -1, 12]
config = EdgeAttributionConfig(granularity="edge")
attribution_patch(bridge, clean[:1], corrupt[:1], metric, config)          # warm call
start = time.perf_counter()
result = attribution_patch(bridge, clean, corrupt, metric, config)
print(json.dumps({{"ms": (time.perf_counter() - start) * 1000, "edges": len(result.edge_scores)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=14)
    parser.add_argument("--python", default=str(ROOT / ".venv-tl" / "bin" / "python"))
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=5000, n_positions=128,
                                     bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    clean = torch.randint(1, 5000, (args.pairs, args.tokens))
    corrupt = clean.clone()
    corrupt[:, [1, args.tokens - 5]] = corrupt[:, [args.tokens - 5, 1]]
    model = attrib.LanguageModel(hf)
    kw = dict(target=[[11]] * args.pairs, contrast=[[12]] * args.pairs, per_position=True)
    attrib.edge_attribution_patching(model, clean[:1], corrupt[:1], **{**kw, "target": 11, "contrast": 12})
    start = time.perf_counter()
    graph = attrib.edge_attribution_patching(model, clean, corrupt, **kw)
    ours = (time.perf_counter() - start) * 1000
    with tempfile.TemporaryDirectory() as folder:
        from tests.methods.test_circuits_oracle import save

        save(hf, Path(folder))
        code = TIMER.format(oracles=str(ROOT / "tests" / "oracles"), folder=folder, clean=clean.tolist(),
                            corrupt=corrupt.tolist())
        proc = subprocess.run([args.python, "-c", code], capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"### CPU, {torch.get_num_threads()} threads — torch {torch.__version__}, transformers "
          f"{transformers.__version__}, Python {platform.python_version()}\n")
    print(f"GPT-2-small shape, random weights, {args.pairs} pair(s) × {args.tokens} tokens, float32\n")
    print("| library | edges × positions | ms | ratio |")
    print("|---|---|---|---|")
    print(f"| attrib `edge_attribution_patching(per_position=True)` | {graph.n_edges * args.tokens} | {ours:.1f} | 1.0× |")
    print(f"| TransformerLens 4.3 `attribution_patch(granularity='edge')` | {theirs['edges']} | {theirs['ms']:.1f} | "
          f"{theirs['ms'] / ours:.1f}× |")


if __name__ == "__main__":
    main()
