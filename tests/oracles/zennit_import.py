"""Import zennit (a test-only oracle) where torchvision cannot load.

zennit imports torchvision only for its ResNet canonizers (``from torchvision.models.resnet import Bottleneck,
BasicBlock``), which these tests do not use. The torchvision wheels on PyPI are built against CUDA torch and do
not load next to the CPU build of torch that `make test` installs, and the CPU wheels' index is not reachable
here, so when ``import torchvision`` fails a stand-in module with those two class names is put in its place,
for zennit's import only, and removed again.
"""

from __future__ import annotations

import importlib
import sys
import types


NAMES = ("torchvision", "torchvision.models", "torchvision.models.resnet", "torchvision.models.vision_transformer")


class _StandIn(types.ModuleType):
    """A module whose every missing attribute is a new empty class (the names zennit and LXT import)."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (), {})
        setattr(self, name, cls)
        return cls


def stand_in_torchvision() -> dict:
    """Put stand-ins for torchvision's modules in ``sys.modules`` if the real one does not import; returns
    what to restore (empty when nothing was replaced)."""
    try:
        import torchvision  # noqa: F401
        return {}
    except Exception:
        saved = {n: sys.modules.get(n) for n in NAMES}
        modules = {n: _StandIn(n) for n in NAMES}
        modules["torchvision"].models = modules["torchvision.models"]
        modules["torchvision.models.vision_transformer"].nn = importlib.import_module("torch.nn")
        modules["torchvision.models"].resnet = modules["torchvision.models.resnet"]
        modules["torchvision.models"].vision_transformer = modules["torchvision.models.vision_transformer"]
        sys.modules.update(modules)
        return saved


def import_zennit():
    """The ``zennit`` package (``zennit.rules``, ``zennit.composites``, ``zennit.attribution`` loaded)."""
    saved = stand_in_torchvision()
    stand_in = bool(saved)
    try:
        zennit = importlib.import_module("zennit")
        for sub in ("rules", "composites", "attribution", "core", "types"):
            importlib.import_module(f"zennit.{sub}")
        return zennit
    finally:
        if stand_in:
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m
