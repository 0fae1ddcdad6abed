"""Reproduce the model-parameter randomization test of Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018,
"Sanity Checks for Saliency Maps" (NeurIPS 2018, arXiv:1810.03292): cascading randomization.

The paper re-initialises a trained network's weights from the top (logits) down, one block at a time, and
compares each explanation with the trained model's by Spearman rank correlation, with and without absolute
values. Its claim: a method that explains the model (the gradient is its example that passes) gives maps
that become dissimilar as more layers are randomised; a map that stays similar explains the input, not the
model. Its caveat: maps that multiply by the input (gradient ⊙ input, integrated gradients) keep the input's
structure visibly even when the model is randomised.

Here, on the demo model (SmolLM2-135M, 30 decoder blocks), on a deep copy:

- Stage k randomises the top k decoder blocks (blocks 29, 28, ..., 30 − k), cumulatively: every weight matrix
  of a block (attention q/k/v/o, MLP gate/up/down) is redrawn from N(0, σ²), σ the original matrix's standard
  deviation (a fixed seed). RMSNorm gains are kept (they are per-feature scales, not learned features).
- The embedding matrix is **not** randomised: it is tied to the output head (randomising it would change which
  direction "the target token" means) and it is the input itself (the attributions are to the embeddings, so
  randomising it would change the input rather than the model). The final stage is thus "every block".
- The target stays the trained model's top next token at every stage. Gradient saliency
  (``attrib.saliency(mode="grad")``, the signed gradient of the target's logit w.r.t. the embeddings) and
  integrated gradients (``score="prob"``, the score attrib documents as converging on this model, zero baseline)
  are compared element by element (tokens × hidden) with the trained model's, by Spearman ρ of the signed
  values and of their absolute values, averaged over the prompts.

Claims (PASS/FAIL) for gradient (signed and |.|) and IG (signed): the correlation falls — the last stage's is
below the first stage's, the mean over the later half of the stages is below the mean over the earlier half,
and the fully randomised value is below ``--max-final`` (0.5). IG |.| is printed beside the "input floor"
ρ(|IG of the trained model|, |embedding|) as ``info``: the paper's caveat about multiplying by the input.

Run ``python repro/sanity_checks.py [--quick] [--device cpu|cuda]``; exit status 1 when a claim fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

import attrib

sys.path.insert(0, str(Path(__file__).resolve().parent))   # run as a script or loaded by path
from _report import CLAIM_HEADER, print_table, verdict  # noqa: E402

Row = tuple[str, ...]
PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to",
           "The quick brown fox jumps over the lazy"]
COLUMNS = ("grad", "|grad|", "IG", "|IG|")


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=r) / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def attributions(model: attrib.LanguageModel, prompt: str, target: int, n_steps: int) -> tuple[dict, float]:
    """Flattened signed maps {"grad": ..., "IG": ...} and the target's probability."""
    grad = attrib.saliency(model, prompt, target=target, mode="grad")
    ig = attrib.integrated_gradients(model, prompt, target=target, score="prob", n_steps=n_steps)
    flat = lambda a: a.values.detach().double().flatten().cpu().numpy()  # noqa: E731
    return {"grad": flat(grad), "IG": flat(ig)}, float(ig.info["f_x"])


def randomise_block(block: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for p in block.parameters():
            if p.dim() >= 2:
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
                p.copy_((noise * p.float().std().cpu()).to(p))


def cascade(model: attrib.LanguageModel, prompts: list[str], stages: list[int], n_steps: int,
            seed: int) -> tuple[list[dict], dict]:
    """Spearman ρ per stage (columns of COLUMNS, averaged over prompts) and facts about the setup."""
    targets, originals, floors = [], [], []
    for prompt in prompts:
        with torch.no_grad(), model.trace(prompt):
            logits = model.output.logits.save()
        targets.append(int(logits[0, -1].argmax()))
        maps, p = attributions(model, prompt, targets[-1], n_steps)
        originals.append((maps, p))
        with torch.no_grad():
            ids = model.tokenize(prompt)["input_ids"].to(model.device)
            emb = model.module.get_input_embeddings()(ids).double().flatten().cpu().numpy()
        floors.append(spearman(np.abs(maps["IG"]), np.abs(emb)))
    hf = copy.deepcopy(model.module)
    randomised = attrib.LanguageModel(hf, model.tokenizer)
    blocks = hf.model.layers
    generator = torch.Generator().manual_seed(seed)
    done, rows = 0, []
    for k in stages:
        for i in range(len(blocks) - 1 - done, len(blocks) - 1 - k, -1):
            randomise_block(blocks[i], generator)
        done = k
        per_prompt, probs = [], []
        for prompt, target, (orig, _) in zip(prompts, targets, originals):
            maps, p = attributions(randomised, prompt, target, n_steps)
            probs.append(p)
            per_prompt.append([f(maps[m], orig[m]) for m in ("grad", "IG")
                               for f in (spearman, lambda a, b: spearman(np.abs(a), np.abs(b)))])
        mean = np.mean(per_prompt, axis=0)
        rows.append({"k": k, "p": float(np.mean(probs)), **dict(zip(COLUMNS, mean.tolist()))})
    facts = {"targets": [model.tokenizer.decode([t]) for t in targets], "n_blocks": len(blocks),
             "p0": float(np.mean([p for _, p in originals])), "floor": float(np.mean(floors))}
    return rows, facts


def claims(rows: list[dict], facts: dict, max_final: float) -> list[Row]:
    n = len(rows)
    out: list[Row] = []
    for col in COLUMNS:
        series = [r[col] for r in rows]
        early, late = float(np.mean(series[: n // 2])), float(np.mean(series[(n + 1) // 2:]))
        measured = (f"first {series[0]:+.3f}, last {series[-1]:+.3f}; mean early {early:+.3f} > "
                    f"late {late:+.3f}")
        if col == "|IG|":
            out.append((f"{col} (multiplies by the input)", "still resembles the input (caveat)",
                        f"{measured}; input floor {facts['floor']:+.3f}", "info"))
            continue
        ok = series[-1] < series[0] and late < early and series[-1] < max_final
        out.append((f"{col} falls with randomisation", f"falls; fully random < {max_final}", measured,
                    "PASS" if ok else "FAIL"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 stages, 1 prompt, 16 IG steps (the tests run this)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--max-final", type=float, default=0.5,
                        help="the fully randomised model's correlation must fall below this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the re-initialisation")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = attrib.load_demo_model(device=args.device)
    n_blocks = len(model.module.model.layers)
    if args.quick:
        prompts, stages, n_steps = PROMPTS[:1], [1, n_blocks // 2, n_blocks], 16
    else:
        prompts, stages, n_steps = PROMPTS, [1, 2, 4, 6, 8, 10, 12, 15, 18, 21, 24, 27, n_blocks], 32
    rows, facts = cascade(model, prompts, stages, n_steps, args.seed)
    print(f"demo model ({model.device}), {len(prompts)} prompt(s), targets {facts['targets']} (the trained "
          f"model's top tokens, kept at every stage); IG: score='prob', {n_steps} Gauss-Legendre steps, zero "
          f"baseline; mean p(target) of the trained model {facts['p0']:.3f}")
    table = [(f"top {r['k']}", f"{n_blocks - r['k']}-{n_blocks - 1}", f"{r['p']:.2e}",
              *(f"{r[c]:+.3f}" for c in COLUMNS)) for r in rows]
    print_table("Spearman ρ with the trained model's maps (elementwise, tokens × hidden; mean over prompts)",
                ("stage", "blocks random", "p(target)", *COLUMNS), table)
    checks = claims(rows, facts, args.max_final)
    print_table(f"Adebayo et al. 2018 cascading randomisation ({'quick' if args.quick else 'full'}, "
                f"{time.perf_counter() - start:.0f} s)", CLAIM_HEADER, checks)
    return verdict(checks)


if __name__ == "__main__":
    sys.exit(main())
