"""Shared output of the repro scripts: aligned text tables and the pass/fail verdict.

>>> print_table("demo", ("check", "result"), [("a", "PASS")])
<BLANKLINE>
demo
check  result
-----  ------
a      PASS
>>> verdict([("a", "paper", "measured", "PASS")])
<BLANKLINE>
OK: all 1 claims reproduced
0
"""

from __future__ import annotations

Row = tuple[str, ...]
CLAIM_HEADER: Row = ("check", "paper", "measured", "result")


def print_table(title: str, header: Row, rows: list[Row]) -> None:
    """A title line, then the rows under the header, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: Row) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()

    print(f"\n{title}\n{line(header)}\n{line(tuple('-' * w for w in widths))}")
    for r in rows:
        print(line(r))


def verdict(checks: list[Row]) -> int:
    """Prints the one-line outcome of (check, paper, measured, PASS | FAIL | info) rows; the exit status."""
    failed = [r[0] for r in checks if r[3] == "FAIL"]
    if failed:
        print(f"\nFAIL: {len(failed)} claim(s) not reproduced: {'; '.join(failed)}")
        return 1
    print(f"\nOK: all {sum(r[3] == 'PASS' for r in checks)} claims reproduced")
    return 0
