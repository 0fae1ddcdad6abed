"""The prompts of a dataset run: a JSONL file (or a list of rows), one example per line, checked line by line.

>>> import os, tempfile
>>> from attrib.runs.dataset import read_examples
>>> path = os.path.join(tempfile.mkdtemp(), "prompts.jsonl")
>>> with open(path, "w") as f:
...     _ = f.write('{"prompt": "The capital of France is", "target": " Paris"}\\n\\n{"prompt": "1 2 3", "id": "n"}\\n')
>>> [(e.id, e.line, e.target) for e in read_examples(path)]
[(1, 1, ' Paris'), ('n', 3, None)]

Each line is one JSON object: ``prompt`` (a non-empty string) and optionally ``target`` and ``contrast`` (a
string, a token id or a list of token ids), ``corrupted`` (the corrupted prompt of the pair methods), ``id`` (a
string or an int, unique; the line number by default) and ``meta`` (anything, copied into the index). Blank
lines are skipped (they still count for line numbers); any other key is refused, so that a typo such as
``"taget"`` does not pass silently. The file is UTF-8 text (a byte-order mark at its start is allowed), and every
value must be JSON that encodes as UTF-8 (no set in ``meta``, no lone surrogate such as ``"\\ud800"``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

from ..errors import RunError

__all__ = ["Example", "read_examples", "examples_from", "fingerprint", "chunked", "KEYS"]

KEYS = ("prompt", "target", "contrast", "corrupted", "id", "meta")
_EXAMPLE = '{"prompt": "The capital of France is", "target": " Paris"}'


@dataclass(frozen=True)
class Example:
    """One prompt of the dataset, with where it came from (``line``: 1-based line of the file or row of the list)."""

    id: str | int
    line: int
    prompt: str
    target: str | list[int] | None = None
    contrast: str | list[int] | None = None
    corrupted: str | None = None
    meta: Any = None


def read_examples(path: str | os.PathLike) -> list[Example]:
    """The examples of the JSONL file at ``path``, in file order; one :class:`~attrib.RunError` for the first
    bad line (the file, the line number, and what a line looks like)."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise RunError(f"the prompts file {name!r} does not exist; pass a JSONL file with one line per prompt "
                       f"such as {_EXAMPLE}.")
    rows: list[tuple[int, Any]] = []
    with open(name, "rb") as f:
        for number, raw in enumerate(f, start=1):
            text = _decoded(raw, number, name)
            if not text.strip():
                continue
            try:
                rows.append((number, json.loads(text)))
            except ValueError as err:
                raise RunError(f"{name}, line {number}: not JSON ({getattr(err, 'msg', err)}); each line is one "
                               f"JSON object such as {_EXAMPLE}.") from None
    return _checked(rows, name, "line")


def _decoded(raw: bytes, number: int, name: str) -> str:
    """A line of the file as text: UTF-8, a byte-order mark at the start of the file left out."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise RunError(f"{name}, line {number}: byte {raw[err.start]:#04x} at column {err.start + 1} is not UTF-8; "
                       "save the prompts file as UTF-8 text.") from None


def examples_from(rows: Iterable[Any]) -> list[Example]:
    """Examples from Python rows: dicts of the same keys as a JSONL line, or plain prompt strings."""
    if isinstance(rows, (str, bytes, dict)):
        raise RunError(f"prompts={rows!r:.60} is one value; pass the path of a JSONL file or a list of rows "
                       f"(dicts such as {_EXAMPLE}, or prompt strings).")
    listed = [(i, {"prompt": row} if isinstance(row, str) else row) for i, row in enumerate(rows, start=1)]
    return _checked(listed, "prompts", "row")


def _checked(rows: Sequence[tuple[int, Any]], source: str, unit: str) -> list[Example]:
    examples = [_example(row, number, f"{source}, {unit} {number}") for number, row in rows]
    if not examples:
        raise RunError(f"{source} holds no prompts; give at least one {unit} such as {_EXAMPLE}.")
    seen: dict[str, int] = {}
    for example in examples:
        key = str(example.id)
        if key in seen:
            raise RunError(f"{source}, {unit} {example.line}: id {example.id!r} was already used on {unit} "
                           f"{seen[key]}; give every prompt its own id (ids are compared as strings).")
        seen[key] = example.line
    return examples


def _example(row: Any, number: int, where: str) -> Example:
    if not isinstance(row, dict):
        raise RunError(f"{where}: {type(row).__name__} {json.dumps(row)[:40]}, not a JSON object; each line is an "
                       f"object such as {_EXAMPLE}.")
    unknown = sorted(set(row) - set(KEYS))
    if unknown:
        raise RunError(f"{where}: unknown key {unknown[0]!r}; a line has the keys {', '.join(KEYS)} (put other "
                       "data under 'meta').")
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as err:     # a set or a tensor in 'meta', a lone surrogate in a string
        what = (f"a string holds the lone surrogate {err.object[err.start]!r}, which is not text"
                if isinstance(err, UnicodeEncodeError) else str(err)[:80])
        raise RunError(f"{where}: {what}; every value of a line must be JSON that encodes as UTF-8 text "
                       "(strings, numbers, booleans, null, lists and objects of them).") from None
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RunError(f"{where}: 'prompt' is {prompt!r:.40}; every line needs a non-empty string prompt, e.g. "
                       f"{_EXAMPLE}.")
    corrupted = row.get("corrupted")
    if corrupted is not None and (not isinstance(corrupted, str) or not corrupted):
        raise RunError(f"{where}: 'corrupted' is {corrupted!r:.40}; it is the corrupted prompt of a pair, a "
                       "non-empty string.")
    ident = row.get("id", number)
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise RunError(f"{where}: 'id' is {ident!r:.40}; an id is a non-empty string or an int (or leave it out: "
                       "the line number).")
    return Example(ident, number, prompt, _token_value(row.get("target"), "target", where),
                   _token_value(row.get("contrast"), "contrast", where), corrupted, row.get("meta"))


def _token_value(value: Any, key: str, where: str) -> str | list[int] | None:
    """A target or contrast: a string, or token ids as a list (one id becomes a one-element list)."""
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise RunError(f"{where}: {key!r} is {value!r:.40}; a {key} is a non-empty string such as \" Paris\", a token "
                   "id, or a list of token ids.")


def fingerprint(examples: Sequence[Example]) -> str:
    """A sha256 of the examples' content (not of the file's bytes: spacing within a line and blank lines at the end
    do not count; each example's line number does, as the index records it and it is the default id)."""
    text = json.dumps([asdict(e) for e in examples], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def chunked(examples: Sequence[Example], size: int) -> list[list[Example]]:
    """Chunk ``k`` holds examples ``k·size`` up to ``(k+1)·size``: fixed by dataset position, so a resumed or a
    distributed run computes exactly the same chunks as one uninterrupted process.

    >>> [len(c) for c in chunked(examples_from(["a", "b", "c"]), 2)]
    [2, 1]
    """
    return [list(examples[k:k + size]) for k in range(0, len(examples), size)]
