"""Edge attribution patching by TransformerLens 4.3 (``transformer_lens.tools.analysis.attribution_patching``),
run in its own virtual environment (``make oracle-env`` makes ``.venv-tl``) on weights saved by the test.

    .venv-tl/bin/python tests/oracles/transformerlens_eap.py MODEL_DIR OUT.json CLEAN_IDS CORRUPT_IDS TARGET CONTRAST

MODEL_DIR holds a Hugging Face model and tokenizer saved with ``save_pretrained`` (safetensors); the ids are
comma-separated. Writes every edge's score as ``[sender, receiver, position, score]`` in attrib's names
(``embed``, ``L{l}H{h}``, ``M{l}`` → ``L{l}H{h}.q|k|v``, ``M{l}``, ``logits``). Not imported by attrib or its tests.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from transformer_lens.model_bridge.sources.transformers.source import boot
from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

SUFFIX = {"q_input": "q", "k_input": "k", "v_input": "v"}


def name(node) -> str:
    if node.kind == "embed":
        return "embed"
    if node.kind in ("attn_head_out",):
        return f"L{node.layer}H{node.head}"
    if node.kind in SUFFIX:
        return f"L{node.layer}H{node.head}.{SUFFIX[node.kind]}"
    if node.kind in ("mlp_out", "mlp_in"):
        return f"M{node.layer}"
    return "logits"


def main(argv: list[str]) -> None:
    folder, out, clean, corrupt, target, contrast = argv
    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float64, attn_implementation="eager").eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    bridge = boot(folder, hf_model=hf, tokenizer=tokenizer, dtype=torch.float64, device="cpu")
    bridge.eval()
    ids = [torch.tensor([[int(i) for i in text.split(",")]]) for text in (clean, corrupt)]
    t, c = int(target), int(contrast)
    result = attribution_patch(bridge, ids[0], ids[1], lambda logits: logits[0, -1, t] - logits[0, -1, c],
                               EdgeAttributionConfig(granularity="edge"))
    rows = [[name(s), name(r), s.position, float(v)] for (s, r), v in result.edge_scores.items()]
    with open(out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main(sys.argv[1:])
