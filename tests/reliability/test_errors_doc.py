"""docs/errors.md documents every error and warning class of attrib.errors: a heading per class (a new class
without docs fails here), its real base classes, and an example; and no heading names a class that is gone."""

from __future__ import annotations

import pathlib
import re

import attrib.errors

DOC = pathlib.Path(__file__).parent.parent.parent / "docs" / "errors.md"
HEADING = re.compile(r"^#{2,4} `(\w+)`\s*$", re.M)


def sections() -> dict[str, str]:
    """Heading name -> the text up to the next heading of a class."""
    text = DOC.read_text()
    found = list(HEADING.finditer(text))
    return {m.group(1): text[m.end(): found[i + 1].start() if i + 1 < len(found) else len(text)]
            for i, m in enumerate(found)}


def test_every_error_and_warning_class_has_a_heading():
    documented = sections()
    missing = [name for name in attrib.errors.__all__ if name not in documented]
    assert missing == [], f"docs/errors.md has no `### \\`Name\\`` heading for {missing}"


def test_no_heading_names_a_class_that_does_not_exist():
    assert [name for name in sections() if name not in attrib.errors.__all__] == []


def test_each_section_gives_the_real_bases_and_an_example():
    for name, body in sections().items():
        cls = getattr(attrib.errors, name)
        bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__)
        assert f"Bases: {bases}." in body, f"{name}: expected 'Bases: {bases}.'"
        assert body.count("```") >= 2, f"{name}: no example"


def test_the_hierarchy_overview_lists_every_class():
    overview = DOC.read_text().split("## The base class")[0]
    for name in attrib.errors.__all__:
        assert re.search(rf"\b{name}\b", overview), f"{name} is missing from the hierarchy overview"
