"""Visualisation: token heatmaps (HTML and matplotlib), outputs × inputs matrices, layer × position and
layer × head grids, all on one diverging colour scale centred at zero.

>>> import numpy as np
>>> from attrib.viz import HeatmapOptions, colours, token_figure, token_html
>>> colours(np.array([-1.0, 0.0, 1.0]))
['#2a1ccc', '#ffffff', '#cc1c2a']
>>> fig = token_figure(["a", " b"], np.array([1.0, -2.0]), HeatmapOptions(decimals=1))
>>> [t.get_text() for t in fig.axes[0].texts]
['1.0', '-2.0']

Results use these: ``Attribution.plot()`` / ``.show()`` / ``_repr_html_()`` and ``PatchingResult.plot()`` /
``_repr_html_()``; every renderer takes a :class:`HeatmapOptions` and/or its fields as keywords.
"""

from .colours import colour_table, colours, css, rgba, scale_of, text_colours
from .heatmap import layer_head_figure, layer_position_figure, layer_position_html
from .labels import mpl_text, token_label
from .markup import grid_html, legend_html, matrix_html, token_html
from .options import HeatmapOptions, resolve
from .tokens import matrix_figure, token_figure

__all__ = ["HeatmapOptions", "resolve", "colours", "rgba", "css", "scale_of", "text_colours", "colour_table",
           "token_label", "mpl_text", "token_html", "matrix_html", "grid_html", "legend_html", "token_figure",
           "matrix_figure", "layer_position_figure", "layer_head_figure", "layer_position_html"]
