"""Fixtures shared by the compiled methods' tests (tests/methods/test_compiled*.py)."""

from __future__ import annotations

import pytest
import torch

import attrib

from ..conftest import WordTokenizer, tiny_hf


@pytest.fixture(scope="module")
def models() -> dict[str, attrib.LanguageModel]:
    """One tiny float32 model per layout, shared by a module's tests: what one test compiles, the next finds warm."""
    return {arch: attrib.LanguageModel(tiny_hf(arch, dtype=torch.float32), WordTokenizer())
            for arch in ("llama", "gpt2", "neox")}
