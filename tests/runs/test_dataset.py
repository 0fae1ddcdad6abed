"""The prompts file: what a line may hold, the defaults, and one clear error (file, line, what to write) per bad
line."""

from __future__ import annotations

import json

import pytest

import attrib
from attrib.runs.dataset import chunked, examples_from, fingerprint, read_examples


def write(tmp_path, *lines: str):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_fields_defaults_and_blank_lines(tmp_path):
    path = write(tmp_path, json.dumps({"prompt": "a", "target": " b", "contrast": 7}), "",
                 json.dumps({"prompt": "c d", "id": "x", "corrupted": "c e", "meta": [1, {"k": None}]}),
                 json.dumps({"prompt": "e", "target": [1, 2], "id": 0}))
    examples = read_examples(path)
    assert [e.id for e in examples] == [1, "x", 0]                  # the line number when no id; blank lines count
    assert [e.line for e in examples] == [1, 3, 4]
    assert examples[0].target == " b" and examples[0].contrast == [7]   # one id becomes a one-token list
    assert examples[1].corrupted == "c e" and examples[1].meta == [1, {"k": None}]
    assert examples[2].target == [1, 2] and examples[2].contrast is None


BAD_LINES = [
    ('{"prompt": "a"', r"p\.jsonl, line 2: not JSON .*each line is one JSON object such as \{\"prompt\""),
    ('["a", "b"]', r"line 2: list .*not a JSON object"),
    ('{"prompt": "a", "taget": " b"}', r"line 2: unknown key 'taget'; a line has the keys prompt, target"),
    ('{"target": " b"}', r"line 2: 'prompt' is None; every line needs a non-empty string prompt"),
    ('{"prompt": ""}', r"line 2: 'prompt' is ''"),
    ('{"prompt": "a", "target": 1.5}', r"line 2: 'target' is 1.5; a target is a non-empty string"),
    ('{"prompt": "a", "contrast": [1, true]}', r"line 2: 'contrast' is \[1, True\]"),
    ('{"prompt": "a", "target": []}', r"line 2: 'target' is \[\]"),
    ('{"prompt": "a", "id": true}', r"line 2: 'id' is True; an id is a non-empty string or an int"),
    ('{"prompt": "a", "corrupted": 3}', r"line 2: 'corrupted' is 3"),
    ('{"prompt": "a", "id": 1}', r"line 2: id 1 was already used on line 1; give every prompt its own id"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_a_bad_line_is_named_with_its_file_and_number(tmp_path, line, message):
    path = write(tmp_path, '{"prompt": "first"}', line)
    with pytest.raises(attrib.RunError, match=message):
        read_examples(path)


def test_a_byte_order_mark_is_left_out(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\n{"prompt": "b"}\n')     # as Windows editors save UTF-8
    assert [(e.id, e.prompt) for e in read_examples(path)] == [(1, "caf\u00e9"), (2, "b")]


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')                      # Latin-1
    with pytest.raises(attrib.RunError, match=r"p\.jsonl, line 2: byte 0xe9 at column 16 is not UTF-8; save the "
                                              r"prompts file as UTF-8 text\."):
        read_examples(path)


@pytest.mark.parametrize("key", ["prompt", "id", "meta", "target", "corrupted"])
def test_a_lone_surrogate_is_refused_on_its_line(tmp_path, key):
    """JSON's "\\ud800" reads back as a str that cannot be written as UTF-8: refused before anything is computed."""
    line = json.dumps({"prompt": "a b", key: "x \ud800"})          # ensure_ascii: the line holds "x \\ud800"
    assert "\\ud800" in line
    path = write(tmp_path, '{"prompt": "first"}', line)
    with pytest.raises(attrib.RunError, match=r"p\.jsonl, line 2: a string holds the lone surrogate '\\ud800', "
                                              r"which is not text; every value of a line must be JSON that encodes "
                                              r"as UTF-8"):
        read_examples(path)


def test_ids_are_compared_as_strings(tmp_path):
    path = write(tmp_path, '{"prompt": "a", "id": "2"}', '{"prompt": "b"}')
    with pytest.raises(attrib.RunError, match=r"line 2: id 2 was already used on line 1"):
        read_examples(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(attrib.RunError, match=r"the prompts file .*nothere\.jsonl' does not exist; pass a JSONL"):
        read_examples(tmp_path / "nothere.jsonl")
    with pytest.raises(attrib.RunError, match=r"p\.jsonl holds no prompts; give at least one line such as"):
        read_examples(write(tmp_path, "", "  "))


def test_rows_given_in_python():
    examples = examples_from(["w1 w2", {"prompt": "w3", "target": " w4"}])
    assert [(e.id, e.prompt, e.target) for e in examples] == [(1, "w1 w2", None), (2, "w3", " w4")]
    with pytest.raises(attrib.RunError, match=r"prompts, row 2: 'prompt' is None"):
        examples_from(["w1", {"target": " w2"}])
    with pytest.raises(attrib.RunError, match=r"is one value; pass the path of a JSONL file or a list of rows"):
        examples_from({"prompt": "w1"})
    with pytest.raises(attrib.RunError, match=r"prompts, row 2: Object of type set is not JSON serializable; every "
                                              r"value of a line must be JSON"):
        examples_from(["w1", {"prompt": "w2", "meta": {"tags": {"a", "b"}}}])


def test_fingerprint_follows_the_content_not_the_spacing(tmp_path):
    a = read_examples(write(tmp_path, '{"prompt": "a", "target": " b"}'))
    b = examples_from([{"target": " b", "prompt": "a"}])
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(examples_from([{"prompt": "a", "target": " c"}]))


def test_chunks_are_fixed_by_position():
    examples = examples_from([f"w{i}" for i in range(1, 8)])
    assert [[e.id for e in c] for c in chunked(examples, 3)] == [[1, 2, 3], [4, 5, 6], [7]]
