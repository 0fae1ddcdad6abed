"""Edge attribution patching against TransformerLens 4.3's (its own virtual environment, same weights saved as
safetensors): every edge at every position, float64. Runs where that environment exists: ``make oracle-env``
makes ``.venv-tl`` (or point ATTRIB_TL_PYTHON at another interpreter that has transformer-lens 4.3)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

import attrib
from tests.conftest import tiny_hf

ROOT = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("ATTRIB_TL_PYTHON", str(ROOT / ".venv-tl" / "bin" / "python"))
CLEAN, CORRUPTED = [3, 14, 15, 9, 26, 5], [3, 14, 40, 9, 26, 7]

pytestmark = pytest.mark.skipif(not Path(PYTHON).exists(), reason="no TransformerLens environment (make oracle-env)")


def llama_mha() -> torch.nn.Module:
    """Llama with as many key/value heads as query heads: TransformerLens' EAP refuses grouped-query attention."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=4, vocab_size=50, max_position_embeddings=32,
                                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).double().eval()


def save(hf: torch.nn.Module, folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf.save_pretrained(folder, safe_serialization=True)
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", pad_token="w0", eos_token="w0",
                                         bos_token="w0").save_pretrained(folder)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_every_edge_at_every_position_equals_transformerlens(name, tmp_path):
    hf = tiny_hf("gpt2") if name == "gpt2" else llama_mha()
    save(hf, tmp_path / "model")
    out = tmp_path / "edges.json"
    proc = subprocess.run([PYTHON, str(ROOT / "tests" / "oracles" / "transformerlens_eap.py"), str(tmp_path / "model"),
                           str(out), ",".join(map(str, CLEAN)), ",".join(map(str, CORRUPTED)), "7", "8"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    graph = attrib.edge_attribution_patching(attrib.LanguageModel(hf), torch.tensor([CLEAN]), torch.tensor([CORRUPTED]),
                                             target=7, contrast=8, per_position=True)
    assert len(rows) == graph.n_edges * len(CLEAN)                 # the same graph, position by position
    ours = torch.tensor([float(graph.per_position[graph.senders.index(s), graph.receivers.index(r), p])
                         for s, r, p, _ in rows], dtype=torch.float64)
    theirs = torch.tensor([v for *_, v in rows], dtype=torch.float64)
    tol = 1e-12 if name == "gpt2" else 1e-6                       # Llama's RMSNorm runs in float32
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol * float(theirs.abs().max()))
    assert float(theirs.abs().max()) > 1e-3
