"""Attribution methods, each a short function on the core."""

from .integrated_gradients import integrated_gradients
from .patching import PatchingResult, activation_patching, attribution_patching
from .result import Attribution
from .saliency import saliency
from .targets import Target

__all__ = ["PatchingResult", "activation_patching", "attribution_patching", "Attribution", "Target", "integrated_gradients", "saliency"]
