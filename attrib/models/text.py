"""Token labels that join back into the text: what results and heatmaps show for each token.

>>> class Bytes:                      # a byte-level tokenizer in miniature: one token per UTF-8 byte
...     def decode(self, ids):
...         return bytes(ids).decode("utf-8", errors="replace")
>>> ids = list("é 😀".encode())
>>> [Bytes().decode([i]) for i in ids]          # one token at a time: pieces of characters
['�', '�', ' ', '�', '�', '�', '�']
>>> token_labels(Bytes(), ids)                   # each character on the token that completes it
['', 'é', ' ', '', '', '', '😀']
>>> "".join(token_labels(Bytes(), ids)) == "é 😀"
True

Byte-level BPE (GPT-2, SmolLM2) and SentencePiece byte fallback split a character that is not in the
vocabulary, an emoji say, into several tokens, each holding some of its UTF-8 bytes; decoding one such token
alone gives U+FFFD ('�'). Such tokens are labelled from the decoded text of their run instead: each token's
label is the text that it completes, so the pieces before the last are empty, and the labels of all tokens
join into the decoded prompt. Tokens that decode cleanly keep their own decoding.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["token_labels", "REPLACEMENT"]

REPLACEMENT = "\ufffd"


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One label per token id (``str(id)`` without a tokenizer); see the module docstring."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    labels = [tokenizer.decode([i]) for i in ids]
    i = 0
    while i < len(ids):
        if REPLACEMENT not in labels[i]:
            i += 1
            continue
        j = i
        while j < len(ids) and REPLACEMENT in labels[j]:
            j += 1
        labels[i:j] = _run(tokenizer, ids[i:j], labels[i:j])
        i = j
    return labels


def _run(tokenizer: Any, ids: list[int], singles: list[str]) -> list[str]:
    """Labels of consecutive tokens that each hold part of a character: the differences between the decoded
    prefixes of the run, each without its unfinished last character (the run's own decoding, whole, at the
    end). The run starts after a token that decoded cleanly, so on a character boundary."""
    labels, before = [], ""
    for k in range(len(ids)):
        text = tokenizer.decode(ids[: k + 1])
        done = text if k == len(ids) - 1 else text.rstrip(REPLACEMENT)
        if not done.startswith(before):         # a tokenizer whose decoding is not prefix-stable: keep its own
            return singles
        labels.append(done[len(before):])
        before = done
    return labels
