"""Writes that survive ``kill -9``: a file appears whole or not at all, appended lines reach the disk before the
next step, and a torn last line is recognised when the file is read back.

>>> import os, tempfile
>>> from attrib.runs.disk import append_lines, read_lines, write_atomic
>>> folder = tempfile.mkdtemp()
>>> write_atomic(os.path.join(folder, "a.json"), b"{}")
>>> path = os.path.join(folder, "log.jsonl")
>>> append_lines(path, [{"id": 1}, {"id": 2}])
>>> with open(path, "a") as f:
...     _ = f.write('{"id": 3')                  # what a kill in the middle of a write leaves
>>> read_lines(path)
([{'id': 1}, {'id': 2}], True)

``write_atomic`` writes a temporary file (named ``.tmp-*`` in the same folder), flushes it to the disk
(fsync), renames it over the target and flushes the folder; ``append_lines`` writes all its lines in one
``write`` and flushes before it returns. ``kill_point`` lets the tests kill the process (SIGKILL) at exactly the
steps in between: ``ATTRIB_RUN_KILL_AT=NAME:N`` kills at the N-th time this process passes the point NAME.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

from ..errors import RunError

__all__ = ["write_atomic", "append_lines", "read_lines", "fsync_folder", "kill_point", "die", "TMP_PREFIX",
           "KILL_ENV"]

TMP_PREFIX = ".tmp-"
KILL_ENV = "ATTRIB_RUN_KILL_AT"
_passed: dict[str, int] = {}


def fsync_folder(folder: str) -> None:
    """Flush a folder's entries (a rename or a removal in it) to the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: str, data: bytes, point: str | None = None) -> None:
    """``path`` holds ``data``, entirely, or keeps what it held before (a kill leaves at most a ``.tmp-*`` file).
    ``point``: the name of the kill point between the flushed temporary file and the rename."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if point is not None and kill_point(point):
            die()
        os.replace(tmp, path)
    finally:                            # a failed write (a full disk) leaves no temporary file either
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_folder(folder)


def append_lines(path: str, lines: list[dict[str, Any]]) -> None:
    """Append one JSON line per dict, in one write, flushed to the disk before returning."""
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if kill_point("torn"):
            cut = len(data) // 2 - (data[len(data) // 2 - 1:len(data) // 2] == b"\n")    # mid-line, never after one
            _write_all(fd, data[:max(1, cut)])
            os.fsync(fd)
            die()
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str) -> tuple[list[Any], bool]:
    """The JSON values of ``path``'s lines, and whether a torn last line (a kill mid-write) was left out. A line
    that is not JSON anywhere else means the file was changed by hand: one :class:`~attrib.RunError`."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()                      # b"" when the file ends with a newline
    values = []
    for number, line in enumerate(lines, start=1):
        try:
            values.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not tail:
                return values, True
            raise RunError(f"{path}, line {number}, is not JSON, so the file was not written by attrib run alone; "
                           "delete the run's folder and start again, or pass another --out.") from None
    return values, bool(tail)


def kill_point(name: str) -> bool:
    """True when ``$ATTRIB_RUN_KILL_AT`` asks this process to die at its N-th pass of point ``name``."""
    spec = os.environ.get(KILL_ENV, "")
    point, _, count = spec.partition(":")
    if point != name:
        return False
    _passed[name] = _passed.get(name, 0) + 1
    return str(_passed[name]) == count


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, as a kill -9 from outside."""
    os.kill(os.getpid(), signal.SIGKILL)
