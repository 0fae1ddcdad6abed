"""Fixtures shared by the core's tests."""

from __future__ import annotations

import pytest

import attrib
from tests.conftest import WordTokenizer, tiny_hf


@pytest.fixture
def lm():
    """A tiny float64 GPT-2 with a word-level tokenizer (w0 … w49)."""
    return attrib.LanguageModel(tiny_hf("gpt2"), WordTokenizer())
