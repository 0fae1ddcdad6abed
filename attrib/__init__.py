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

from .core import Model, save
from .errors import *  # noqa: F401,F403 - every error class is public
from .errors import __all__ as _errors
from .models import LanguageModel, load_demo_model
from .methods import (activation_patching, attribution_patching, circuit_faithfulness, deconvolution, deeplift,
                      edge_attribution_patching, edge_patching, faithfulness, generate_and_attribute, gim,
                      gradient_shap, guided_backprop, integrated_gradients, lrp, path_profile, saliency)
from .results import Attribution, Evaluation, Faithfulness, Graph, PatchingResult, PathProfile, load
from .runs import run_dataset

__version__ = "0.1.0"

__all__ = ["Model", "LanguageModel", "load_demo_model", "save", "integrated_gradients", "saliency",
           "attribution_patching", "activation_patching", "path_profile", "generate_and_attribute",
           "edge_attribution_patching", "edge_patching", "circuit_faithfulness", "lrp", "deeplift", "guided_backprop",
           "deconvolution", "gim", "gradient_shap", "faithfulness", "Attribution", "Evaluation", "PatchingResult",
           "PathProfile", "Graph", "Faithfulness", "load", "run_dataset", *_errors]
