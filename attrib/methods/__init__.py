"""Attribution methods: each one body on the input adapter (:mod:`attrib.methods.inputs`)."""

from .circuits import edge_attribution_patching
from .edge_patching import circuit_faithfulness, edge_patching
from .generation import generate_and_attribute
from .deeplift import deeplift
from .evaluate import faithfulness
from .gim import gim
from .gradient_shap import gradient_shap
from .guided import deconvolution, guided_backprop
from .integrated_gradients import integrated_gradients
from .lrp import lrp
from .path_profile import path_profile
from .patching import activation_patching, attribution_patching
from .saliency import saliency

__all__ = ["integrated_gradients", "saliency", "attribution_patching", "activation_patching", "path_profile",
           "generate_and_attribute",
           "edge_attribution_patching",
           "edge_patching", "circuit_faithfulness", "lrp", "deeplift",
           "guided_backprop", "deconvolution", "gim", "gradient_shap", "faithfulness"]
