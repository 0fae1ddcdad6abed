"""AttnLRP and CP-LRP by LXT 2.1 (``lxt.efficient``), run in its own virtual environment: LXT patches
transformers 4.x modules and does not import with the transformers 5 that attrib's tests use. The test saves a
tiny model as safetensors and calls

    PYTHON tests/oracles/lxt_lrp.py MODEL_DIR OUT.json IDS TARGET VARIANT

with IDS comma-separated, VARIANT ``attnlrp`` or ``cp-lrp``. Writes the relevance of the input embeddings
(input embeddings × their gradient under LXT's patches, one row per token) for the last position's logit of
TARGET. Not imported by attrib or its tests.
"""

from __future__ import annotations

import importlib
import json
import sys

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gpt2": "gpt2", "gemma3_text": "gemma3",
            "bert": "bert"}


def main(argv: list[str]) -> None:
    folder, out, ids, target, variant = argv
    config = AutoConfig.from_pretrained(folder)
    family = FAMILIES[config.model_type]
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.oracles.zennit_import import stand_in_torchvision
    stand_in_torchvision()                     # LXT imports torchvision for its ViT patches, unused here
    from lxt.efficient import monkey_patch
    patches = importlib.import_module(f"lxt.efficient.models.{family}")
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    monkey_patch(modeling, patches.attnLRP if variant == "attnlrp" else patches.cp_LRP)
    auto = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(folder, torch_dtype=torch.float64, attn_implementation="eager").eval()
    ids = torch.tensor([[int(i) for i in ids.split(",")]])
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=x).logits
    logits[0, -1, int(target)].backward()
    with open(out, "w") as f:
        json.dump({"relevance": (x * x.grad)[0].tolist(), "logit": float(logits[0, -1, int(target)])}, f)


if __name__ == "__main__":
    main(sys.argv[1:])
