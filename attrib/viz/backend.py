"""Where output goes: pyplot on a non-interactive backend when there is no display, HTML in a notebook kernel.

>>> from attrib.viz.backend import pyplot, in_notebook
>>> plt = pyplot()
>>> in_notebook()
False

:func:`pyplot` switches matplotlib to Agg only when nothing has chosen a backend yet (no ``MPLBACKEND``,
no ``matplotlib.use``, pyplot not imported), outside IPython, and without a display; a notebook's inline
backend and a user's choice are left alone.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["pyplot", "in_ipython", "in_notebook", "has_display", "display_html"]


def in_ipython() -> bool:
    """Whether this runs inside IPython (a terminal shell or a notebook kernel)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        return ipython.get_ipython() is not None
    except Exception:  # noqa: BLE001 - a broken IPython means no IPython
        return False


def in_notebook() -> bool:
    """Whether this runs in a notebook kernel (Jupyter), where HTML output renders."""
    if not in_ipython():
        return False
    return getattr(sys.modules["IPython"].get_ipython(), "kernel", None) is not None


def has_display() -> bool:
    """False on Linux and other X11/Wayland systems without ``DISPLAY`` / ``WAYLAND_DISPLAY``."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _backend_chosen(matplotlib: Any) -> bool:
    if os.environ.get("MPLBACKEND") or "matplotlib.pyplot" in sys.modules:
        return True
    rc = matplotlib.rcParams
    if hasattr(rc, "_get_backend_or_none"):        # matplotlib >= 3.8
        return rc._get_backend_or_none() is not None
    from matplotlib import rcsetup

    return dict.__getitem__(rc, "backend") is not rcsetup._auto_backend_sentinel


def pyplot() -> Any:
    """``matplotlib.pyplot``, on Agg when no backend was chosen, outside IPython, with no display."""
    import matplotlib

    if not _backend_chosen(matplotlib) and not in_ipython() and not has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def display_html(markup: str) -> bool:
    """Show ``markup`` as HTML when in a notebook kernel; returns whether it did."""
    if not in_notebook():
        return False
    from IPython.display import HTML, display

    display(HTML(markup))
    return True
