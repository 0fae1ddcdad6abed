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

__all__ = ["sync", "time_contestants", "cell", "ratio", "paired", "header"]


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
                     before: Callable[[], None] = lambda: None, raw: dict[str, list[float]] | None = None
                     ) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """(median ms, failure text, first result) per contestant; ``before()`` runs (untimed) before every call.
    ``raw``, when given, receives every contestant's timed seconds, one per repetition (for :func:`paired`)."""
    times: dict[str, list[float]] = {k: [] for k in runs} if raw is None else raw
    times.update({k: [] for k in runs})
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


def paired(raw: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float] | None:
    """The median over repetitions of ``a``'s time / ``b``'s time in the same repetition, with a 95% confidence
    interval of that median (order statistics). Both ran within the same round, so a machine that speeds up or
    slows down over the run (lent GPU hosts drift by several percent within minutes) moves both alike; the ratio
    of two medians taken over the whole run does not cancel that drift."""
    xs, ys = raw.get(a, []), raw.get(b, [])
    if not xs or len(xs) != len(ys):
        return None
    r = sorted(x / y for x, y in zip(xs, ys))
    n = len(r)
    half = 0.98 * n ** 0.5  # 1.96 * sqrt(n) / 2: the binomial interval of the median's rank
    lo, hi = max(0, int(n / 2 - half)), min(n - 1, int(n / 2 + half))
    return statistics.median(r), r[lo], r[hi]


def ratio(med: dict[str, float], a: str, b: str | None, invert: bool = False) -> str:
    if a not in med or b is None or b not in med:
        return "–"
    return f"{(med[b] / med[a]) if invert else (med[a] / med[b]):.3f}"
