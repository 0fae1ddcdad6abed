"""The example notebooks run top to bottom in a fresh kernel (offline, CPU) and draw their figures.

Each notebook is executed in memory with ``notebooks/run.py``'s :func:`execute` (the committed file is not
touched), with a time limit per cell; a failing cell fails the test with its traceback.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT = 300   # seconds; the slowest cell takes about 15 s on a laptop CPU

# notebook -> (least number of PNG figures, texts its outputs must contain)
EXPECTED = {
    "01_quickstart.ipynb": (2, ["completeness delta"]),
    "02_gradients_tour.ipynb": (1, ["3 × the single-pass gradient: True", "OutOfOrderError",
                                   "torch.Size([1, 2, 576]) torch.Size([1, 2, 576])"]),
    "03_ioi_patching.ipynb": (5, ["Pearson r (attribution vs activation patching, 270 heads"]),
    "04_saliency_vs_ig.ipynb": (5, ["integrated gradients"]),
    "05_rules_and_faithfulness.ipynb": (2, ["AttnLRP: Σ relevance", "CP-LRP: Σ relevance", "AOPC deletion ↑"]),
    "06_circuits.ipynb": (2, ["eap-ig graph of 301 senders × 481 receivers (70651 edges)",
                              "EAP-IG: Pearson r with exact edge patching", "digraph circuit"]),
}


def runner():
    """notebooks/run.py as a module (notebooks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("notebooks_run", ROOT / "notebooks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "text/plain" in out.get("data", {}):
                parts.append(out.data["text/plain"])
    return "\n".join(parts)


def test_every_notebook_is_listed():
    assert [p.name for p in runner().notebooks()] == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebook_keeps_its_outputs(name):
    """The committed files carry their figures (GitHub shows them) and no timing metadata."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    assert runner().figures(nb) >= EXPECTED[name][0]
    assert all("execution" not in cell.metadata for cell in nb.cells)


@pytest.mark.slow
def test_kernel_is_this_interpreter(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    from nbformat.v4 import new_code_cell, new_notebook

    path = tmp_path / "probe.ipynb"
    nb = new_notebook(cells=[new_code_cell("import sys; print(sys.executable)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    out = runner().execute(path, timeout=120)
    assert out.cells[0].outputs[0].text.strip() == sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_and_draws(name):
    pytest.importorskip("nbclient")
    run = runner()
    path = ROOT / "notebooks" / name
    before = path.read_bytes()
    nb = run.execute(path, timeout=CELL_TIMEOUT)     # raises CellExecutionError on a failing cell
    assert path.read_bytes() == before, "executing in memory must not rewrite the notebook"
    errors = [out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"]
    assert not errors, errors
    least, texts = EXPECTED[name]
    assert run.figures(nb) >= least
    text = outputs_text(nb)
    for expected in texts:
        assert expected in text, f"{expected!r} missing from the outputs of {name}"
    if name.startswith("03"):   # the heads' Pearson r measured in tests/methods/test_patching.py is 0.986
        r = float(re.search(r"270 heads at the last position\) = (-?[0-9.]+)", text).group(1))
        assert r >= 0.88
