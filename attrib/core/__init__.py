"""The core: traces, module values, ordered backward contexts."""

from .backward import BackwardContext
from .demo_model import load_demo_model
from .model import LanguageModel, Model
from .save import save
from .trace import Trace

__all__ = ["BackwardContext", "LanguageModel", "Model", "Trace", "load_demo_model", "save"]
