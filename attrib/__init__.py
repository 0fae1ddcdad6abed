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

from .methods import (Attribution, NonFiniteAttributionError, PatchingResult, TargetError, activation_patching,
                      attribution_patching, integrated_gradients, saliency)
from .methods.common import MethodError

__version__ = "0.1.0"

__all__ = ["PatchingResult", "activation_patching", "attribution_patching", "Attribution", "MethodError", "NonFiniteAttributionError", "TargetError", "integrated_gradients",
           "saliency", "AttribError", "GradientValueError", "GraphFreedError", "InputError", "LanguageModel", "Model",
           "ModulePathError", "NoGradError", "NonScalarLossError", "OutOfOrderError", "load_demo_model", "save"]
