"""Every result type shares top / to_dict / save / load / plot / _repr_html_; files hold no pickle."""

from __future__ import annotations

import json

import pytest
import torch

import attrib
from attrib.results import files
from tests.conftest import tiny_hf

CLEAN, CORRUPTED = torch.tensor([[3, 14, 15, 9, 26, 5]]), torch.tensor([[3, 14, 7, 9, 26, 5]])


@pytest.fixture(scope="module")
def results():
    model = attrib.LanguageModel(tiny_hf("gpt2"))
    ig = attrib.integrated_gradients(model, CLEAN, target=[7, 11], n_steps=3, per_token=True)
    sal = attrib.saliency(attrib.Model(torch.nn.Linear(3, 2).double()), torch.ones(1, 3, dtype=torch.float64),
                          target=1)
    patch = attrib.activation_patching(model, CLEAN, CORRUPTED, target=7, components=("resid", "heads"))
    return {"ig": ig, "saliency": sal, "patching": patch}


@pytest.mark.parametrize("name", ["ig", "saliency", "patching"])
def test_save_and_load_round_trip(results, name, tmp_path):
    result = results[name]
    path = tmp_path / f"{name}.safetensors"
    result.save(path)
    back = attrib.load(path)
    assert type(back) is type(result)
    assert type(result).load(path).to_dict() == result.to_dict()
    for field in ("tokens", "target", "method", "info"):
        assert getattr(back, field) == getattr(result, field)
    if name == "patching":
        assert back.positions == result.positions and back.metric_clean == result.metric_clean
        for c in result.scores:
            assert torch.equal(back.scores[c], result.scores[c])
    else:
        assert torch.equal(back.values, result.values) and torch.equal(back.scores, result.scores)
        assert back.output_tokens == result.output_tokens
    assert back.top(3) == result.top(3)


@pytest.mark.parametrize("name", ["ig", "saliency", "patching"])
def test_the_protocol(results, name):
    result = results[name]
    d = result.to_dict()
    assert d["kind"] == type(result).KIND and json.loads(json.dumps(d)) == d
    assert len(result.top(2)) == 2
    assert "<" in result._repr_html_()
    import matplotlib.pyplot as plt

    fig = result.plot()
    assert fig.axes
    plt.close(fig)


def test_files_are_checked(results, tmp_path):
    path = tmp_path / "a.safetensors"
    results["saliency"].save(path)
    with pytest.raises(attrib.ResultFileError, match="holds an attribution result, not a patching"):
        attrib.PatchingResult.load(path)
    with pytest.raises(attrib.ResultFileError, match="is not a file"):
        attrib.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(attrib.ResultFileError, match="not a safetensors file"):
        attrib.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(attrib.ResultFileError, match="not an attrib result"):
        attrib.load(tmp_path / "plain.safetensors")
    files.write(tmp_path / "future.safetensors", "attribution", {}, {"format": files.FORMAT + 1})
    with pytest.raises(attrib.ResultFileError, match="newer attrib"):
        attrib.load(tmp_path / "future.safetensors")


def test_no_pickle_in_the_file(results, tmp_path):
    path = tmp_path / "p.safetensors"
    results["patching"].save(path)
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:200] and raw[8:9] == b"{"     # a JSON header, not a pickle stream
