"""Attribution methods, each a short function on the core."""

from .integrated_gradients import NonFiniteAttributionError, integrated_gradients
from .patching import PatchingResult, activation_patching, attribution_patching
from .result import Attribution
from .saliency import saliency
from .targets import Target, TargetError

__all__ = ["PatchingResult", "activation_patching", "attribution_patching", "Attribution", "NonFiniteAttributionError", "Target", "TargetError", "integrated_gradients", "saliency"]
