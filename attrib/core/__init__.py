"""The core: traces, module values, ordered backward contexts, on any ``nn.Module``."""

from .backward import BackwardContext
from .model import Model
from .save import save
from .trace import Trace

__all__ = ["BackwardContext", "Model", "Trace", "save"]
