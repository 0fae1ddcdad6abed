"""The core: traces, module values, ordered backward contexts."""

from .backward import BackwardContext
from .demo_model import load_demo_model
from .errors import (AttribError, GradientValueError, GraphFreedError, InputError, ModulePathError,
                     OutOfOrderError)
from .model import LanguageModel, Model
from .patch import NoGradError, NonScalarLossError
from .save import save
from .trace import Trace

__all__ = ["AttribError", "BackwardContext", "GradientValueError", "GraphFreedError", "InputError",
           "LanguageModel", "Model", "ModulePathError", "NoGradError", "NonScalarLossError", "OutOfOrderError",
           "Trace", "load_demo_model", "save"]
