"""The paper reproductions in repro/: each script's ``--quick`` run reproduces its claims and prints its tables
(run as a user would, in a subprocess from the repository root), and an impossible claim makes ``main()`` return
non-zero with a one-line reason (the script loaded from its path, run in this process)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> lines its --quick output must contain (table headers and rows)
EXPECTED = {
    "ig_axioms": ["Sundararajan et al. 2017", "check", "completeness, demo prob: within 5%", "sensitivity(a)",
                  "dummy", "implementation invariance, class 2", "OK: all"],
    "atp_vs_patching": ["group", "Pearson r", "heads, last position", "resid, early layers 0-9",
                        "mlp, late layers 20-29", "Nanda 2023 / Kramár et al. 2024 claims", "OK: all"],
    "ig_convergence": ["completeness with attrib's defaults", "defaults: |delta|/|f(x)-f(b)| <= 1%",
                       "defaults: evaluations per prompt", "former default: zeros, 50 Gauss-Legendre", "OK: all"],
    "sanity_checks": ["Spearman ρ", "top 1", "top 30", "|IG|", "Adebayo et al. 2018", "grad falls", "OK: all"],
    "atp_star": ["Attribution patching with and without AtP*'s fixes", "AtP + qk_fix", "AtP + grad_drop",
                 "Kramár et al. 2024 claims", "OK: all"],
    "faithfulness": ["Faithfulness (sorted by deletion AOPC", "integrated_gradients", "attnlrp", "cp-lrp", "gim",
                     "deeplift", "gradient_shap", "smoothgrad", "random", "AttnLRP more faithful than IG", "OK: all"],
    "ioi_circuit": ["Faithfulness: share of the metric recovered", "Against exact edge patching of 40 top edges",
                    "Hanna et al. 2024 claims", "EAP-IG closer to full faithfulness", "OK: all"],
}

# script -> arguments that no measurement can satisfy, and a part of the failure line they must produce
IMPOSSIBLE = {
    "ig_axioms": (["--tolerance", "0", "--invariance-tolerance", "-1"], "implementation invariance"),
    "atp_vs_patching": (["--min-heads-r", "1.01"], "AtP tracks patching for heads"),
    "sanity_checks": (["--max-final", "-1.01"], "grad falls with randomisation"),
    "ig_convergence": (["--max-mean-evaluations", "10"], "defaults: evaluations per prompt"),
    "ioi_circuit": (["--min-margin", "10"], "EAP-IG closer to full faithfulness"),
    "atp_star": (["--slack", "-100"], "no more false negatives"),
    "faithfulness": (["--min-margin", "1000"], "the best method beats the random order"),
}


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"repro_{name}", ROOT / "repro" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_run_reproduces_the_claims(name):
    proc = subprocess.run([sys.executable, f"repro/{name}.py", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{name} --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    for text in EXPECTED[name]:
        assert text in proc.stdout, f"{text!r} missing from the output of {name} --quick:\n{proc.stdout}"
    assert "FAIL" not in proc.stdout
    assert " PASS" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(IMPOSSIBLE))
def test_an_impossible_claim_fails(name, capsys):
    args, reason = IMPOSSIBLE[name]
    assert load(name).main(["--quick", *args]) == 1
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAIL: ") and reason in last, out
