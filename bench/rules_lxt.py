"""LXT 2.1's AttnLRP and a plain gradient, timed in LXT's own environment (transformers 4.x) on weights saved by
``bench/rules.py --lxt PYTHON``:

    PYTHON bench/rules_lxt.py MODEL_DIR OUT.json BATCH TOKENS REPS WARMUP

Writes the median milliseconds of each: the plain gradient first, then the same after LXT's ``monkey_patch``
(which patches the classes, so the two cannot alternate in one process). CPU only. Not imported by attrib.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM


def main(argv: list[str]) -> None:
    folder, out, batch, tokens, reps, warmup = argv
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.oracles.zennit_import import stand_in_torchvision
    stand_in_torchvision()
    plain = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    torch.manual_seed(1)
    ids = torch.randint(100, 10000, (int(batch), int(tokens)))
    target = torch.randint(100, 10000, (int(batch),))

    def run(model):
        x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=x).logits
        logits[torch.arange(len(ids)), -1, target].sum().backward()
        return x * x.grad

    times = {"gradient": [], "attnlrp": []}
    for name in ("gradient", "attnlrp"):
        if name == "attnlrp":
            from lxt.efficient import monkey_patch
            from transformers.models.llama import modeling_llama
            monkey_patch(modeling_llama)
        for rep in range(int(warmup) + int(reps)):
            start = time.perf_counter()
            run(plain)
            if rep >= int(warmup):
                times[name].append((time.perf_counter() - start) * 1000)
    with open(out, "w") as f:
        json.dump({k: statistics.median(v) for k, v in times.items()}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
