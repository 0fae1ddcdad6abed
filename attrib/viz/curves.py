"""Perturbation curves: deletion and insertion, one line per attribution method.

>>> from attrib.viz.curves import evaluation_figure
>>> fig = evaluation_figure(["ig", "random"], [0, 0.5, 1], [[0, -2, -3], [0, -1, -3]], [[-3, -1, 0], [-3, -2, 0]],
...                         "logit")
>>> len(fig.axes)
2
"""

from __future__ import annotations

from typing import Any, Sequence

from .backend import pyplot

__all__ = ["evaluation_figure"]


def evaluation_figure(methods: Sequence[str], grid: Sequence[float], deletion: Sequence[Sequence[float]],
                      insertion: Sequence[Sequence[float]], score: str, *, title: str | None = None,
                      figsize: tuple[float, float] | None = None) -> Any:
    """Left: the score's change as the most relevant tokens are deleted (lower is more faithful); right: as they
    are inserted into the fully replaced prompt (higher is more faithful). The random order is dashed."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize or (10.0, 4.0), layout="constrained", sharex=True)
    for name, d, i in zip(methods, deletion, insertion):
        style = dict(linestyle="--", color="grey") if name == "random" else {}
        left.plot(list(grid), list(d), label=name, **style)
        right.plot(list(grid), list(i), label=name, **style)
    left.set_title("deletion, most relevant first")
    right.set_title("insertion, most relevant first")
    left.set_ylabel(f"{score} − {score} of the full prompt")
    right.set_ylabel(f"{score} − {score} of the replaced prompt")
    for ax in (left, right):
        ax.set_xlabel("share of the prompt's tokens")
        ax.axhline(0.0, color="black", linewidth=0.6)
    right.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig
