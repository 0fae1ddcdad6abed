"""The timing loop every bench/ script shares: contestants side by side in one run.

Each repetition runs every contestant once, in a shuffled (seeded) order; after the warm-up rounds each
timed call follows an untimed call of the same contestant, so no contestant pays for memory another one
just freed. A contestant that raises is reported in its cell and skipped from then on.
"""

from __future__ import annotations

import datetime
import platform
import random
import statistics
import time
from typing import Any, Callable

import torch

__all__ = ["sync", "time_contestants", "cell", "ratio", "header"]


def header(device: torch.device, reps: int, warmup: int, libraries: dict[str, str]) -> str:
    """One line of versions, device, repetitions and time: the context every bench table is read in."""
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    libs = "".join(f" · {k} {v}" for k, v in libraries.items())
    return (f"torch {torch.__version__} · transformers {transformers.__version__}{libs} · "
            f"python {platform.python_version()} · device {device} ({name}, {torch.get_num_threads()} CPU threads) · "
            f"median of {reps} after {warmup} warm-up · {datetime.datetime.now().isoformat(timespec='seconds')}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_contestants(runs: dict[str, Callable[[], Any]], device: torch.device, reps: int, warmup: int,
                     before: Callable[[], None] = lambda: None
                     ) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """(median ms, failure text, first result) per contestant; ``before()`` runs (untimed) before every call."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    failed: dict[str, str] = {}
    first: dict[str, Any] = {}
    shuffler = random.Random(0)
    for rep in range(warmup + reps):
        order = list(runs)
        shuffler.shuffle(order)
        for key in order:
            if key in failed:
                continue
            if rep >= warmup:  # an untimed call of the same contestant first
                before()
                try:
                    runs[key]()
                except Exception:
                    pass
            before()
            sync(device)
            t0 = time.perf_counter()
            try:
                out = runs[key]()
                sync(device)
            except Exception as err:  # report in the cell, keep going
                text = str(err).splitlines()[0][:80].replace("|", "/") if str(err) else ""
                failed[key] = f"failed: {type(err).__name__}: {text}"
                continue
            dt = time.perf_counter() - t0
            if rep >= warmup:
                times[key].append(dt)
            first.setdefault(key, out)
            del out
    return {k: statistics.median(v) * 1e3 for k, v in times.items() if v}, failed, first


def cell(med: dict[str, float], failed: dict[str, str], key: str, digits: int = 1) -> str:
    if key in failed:
        return failed[key]
    return f"{med[key]:.{digits}f}" if key in med else "–"


def ratio(med: dict[str, float], a: str, b: str | None, invert: bool = False) -> str:
    if a not in med or b is None or b not in med:
        return "–"
    return f"{(med[b] / med[a]) if invert else (med[a] / med[b]):.3f}"
