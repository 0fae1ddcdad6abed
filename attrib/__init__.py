"""attrib: explain what language models (and any PyTorch model) compute, with gradient hooks.

>>> import torch, attrib
>>> net = attrib.Model(torch.nn.Linear(2, 1))
>>> with net.trace(torch.ones(1, 2)):
...     y = net.output
...     with y.sum().backward():
...         g = y.grad.save()
>>> g.tolist()
[[1.0]]
"""

from .core import (AttribError, GradientValueError, GraphFreedError, InputError, LanguageModel, Model,
                   ModulePathError, NoGradError, NonScalarLossError, OutOfOrderError, load_demo_model, save)

__version__ = "0.1.0"

__all__ = ["AttribError", "GradientValueError", "GraphFreedError", "InputError", "LanguageModel", "Model",
           "ModulePathError", "NoGradError", "NonScalarLossError", "OutOfOrderError", "load_demo_model", "save"]
