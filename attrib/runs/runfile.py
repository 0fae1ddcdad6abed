"""``run.json``: the options of a run's first start, written before anything else, compared at every restart.

>>> import tempfile
>>> from attrib.runs.runfile import check_or_record
>>> folder = tempfile.mkdtemp()
>>> settings = {"method": "saliency", "options": {}, "chunk": 16, "model": "demo", "dtype": None, "prompts": "ab12"}
>>> check_or_record(folder, settings)
>>> check_or_record(folder, {**settings, "chunk": 4})
Traceback (most recent call last):
...
attrib.errors.RunError: ... was started with other options (chunk 16 then, 4 now); ...

Only what changes the results is compared: the method and its options, the chunk size (it fixes which prompts
are computed together), the model, its dtype, and the prompts' content. The number of processes, the device
and the progress bar may change between starts.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..errors import RunError
from .disk import write_atomic

__all__ = ["RUN_FILE", "FORMAT", "check_or_record", "recorded"]

RUN_FILE = "run.json"
FORMAT = 1
_COMPARED = ("method", "options", "chunk", "model", "dtype", "prompts")
_RUN_FILES = re.compile(r"^(index(\.rank\d+)?\.jsonl|shard-\d+\.safetensors)$")


def check_or_record(folder: str, settings: dict[str, Any]) -> None:
    """Record ``settings`` in ``folder/run.json`` on the first start; on a restart refuse settings that differ
    (one :class:`~attrib.RunError` naming each difference)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create the run's folder {folder!r} ({err.strerror or err}); pass an --out inside a "
                       "folder that exists and that you can write to.") from None
    path = os.path.join(folder, RUN_FILE)
    if not os.path.isfile(path):
        strays = sorted(n for n in os.listdir(folder) if _RUN_FILES.match(n))
        if strays:
            raise RunError(f"{folder!r} holds {strays[0]} but no {RUN_FILE}, so it is not the folder of a run that "
                           "can be resumed; pass another --out.")
        write_atomic(path, (json.dumps({"format": FORMAT, **settings}, indent=2, sort_keys=True) + "\n").encode())
        return
    first = _read(path)
    changed = [_difference(key, first.get(key), settings.get(key)) for key in _COMPARED
               if first.get(key) != settings.get(key)]
    if changed:
        raise RunError(f"{folder!r} was started with other options ({'; '.join(changed)}); to resume, run the same "
                       "command as the first time, or pass another --out for a new run.")


def recorded(folder: str) -> dict[str, Any] | None:
    """What ``folder/run.json`` recorded at the run's first start (None when there is none yet)."""
    path = os.path.join(folder, RUN_FILE)
    return _read(path) if os.path.isfile(path) else None


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            first = json.load(f)
    except (OSError, ValueError) as err:
        raise RunError(f"{path!r} cannot be read ({str(err)[:60]}); delete the run's folder and start again, or "
                       "pass another --out.") from None
    version = first.get("format", 0) if isinstance(first, dict) else None
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT:
        raise RunError(f"{path!r} is not the run file of this attrib (format {version!r}); upgrade attrib, or pass "
                       "another --out.")
    return first


def _difference(key: str, then: Any, now: Any) -> str:
    if key == "prompts":
        return f"the prompts' content changed (sha256 {str(then)[:12]} then, {str(now)[:12]} now)"
    if key == "options":
        keys = sorted(set(then or {}) | set(now or {}))
        return "; ".join(f"{k} {_shown((then or {}).get(k))} then, {_shown((now or {}).get(k))} now"
                         for k in keys if (then or {}).get(k) != (now or {}).get(k))
    return f"{key} {_shown(then)} then, {_shown(now)} now"


def _shown(value: Any) -> str:
    return "(not set)" if value is None else json.dumps(value)
