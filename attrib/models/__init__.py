"""What is specific to kinds of models: Hugging Face language models with their tokenizer, the demo model,
the layout of each transformer family, and the names of the places in a model (sites)."""

from .demo import load_demo_model
from .language import LanguageModel
from .layouts import Layout, layout_of, register
from .sites import Site, site

__all__ = ["LanguageModel", "load_demo_model", "Layout", "layout_of", "register", "Site", "site"]
