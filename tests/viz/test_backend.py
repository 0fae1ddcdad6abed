"""The matplotlib backend: Agg when nothing chose one and there is no display; a user's or a notebook's
choice is left alone. Each case runs in a fresh interpreter, since a backend is chosen once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PLOT = """
import matplotlib
calls = []
real_use = matplotlib.use
matplotlib.use = lambda *a, **k: (calls.append(a[0]), real_use(*a, **k))[1]
{setup}
import numpy as np
from attrib.viz import token_figure
fig = token_figure(["a", " b"], np.array([1.0, -1.0]))
print(matplotlib.get_backend().lower(), calls)
"""


def run(setup: str = "", **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    environ.update(env)
    code = PLOT.format(setup=textwrap.dedent(setup))
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


pytestmark = pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="these always have a display")


def test_no_display_and_no_choice_gives_agg():
    assert run() == "agg ['Agg']"


def test_a_chosen_backend_is_kept():
    assert run('matplotlib.use("svg")') == "svg ['svg']"
    assert run(MPLBACKEND="pdf") == "pdf []"


def test_ipython_is_left_to_choose():
    """Inside IPython (a notebook's inline backend is set there), pyplot() never calls matplotlib.use."""
    out = run("from IPython.core.interactiveshell import InteractiveShell\nInteractiveShell.instance()")
    assert out.endswith(" []")
