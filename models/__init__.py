"""Model definitions and dataset loaders. ``build(name, **kw)`` records how a model was made,
so ``dyngate.save``/``load`` can rebuild it."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from models.mobilenetv2 import mobilenetv2
from models.resnet import resnet18, resnet20, resnet20_postact, resnet34, resnet56
from models.resnet50 import resnet50
from models.vgg import vgg16
from netspec.archs import ARCHS, ArchError

_BUILDERS = {b.__name__: b for b in (resnet18, resnet34, resnet50, resnet20, resnet20_postact, resnet56,
                                      vgg16, mobilenetv2)}
# the registered names are netspec's, which accel_sim's built-ins come from too
REGISTRY: dict[str, Callable[..., nn.Module]] = {name: _BUILDERS[name] for name in ARCHS}


def register(name: str, builder: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Add a model builder to the registry, so ``build(name, ...)`` works for it and
    ``dyngate.load(path)`` can rebuild checkpoints of it with no ``model=`` argument."""
    if not isinstance(name, str) or not name:
        raise ArchError(f"model name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise ArchError(f"builder for {name!r} must be callable, got {type(builder).__name__}")
    if name in REGISTRY and not replace and REGISTRY[name] is not builder:
        raise ArchError(f"model {name!r} is already registered; pass replace=True to override it")
    REGISTRY[name] = builder


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model and tag it with its recipe (``model.dyngate_arch``)."""
    if name not in REGISTRY:
        raise ArchError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    model = REGISTRY[name](**kwargs)
    model.dyngate_arch = {"name": name, "kwargs": dict(kwargs)}
    return model


__all__ = ["REGISTRY", "ArchError", "build", "mobilenetv2", "register", "resnet18", "resnet20", "resnet20_postact",
           "resnet34", "resnet50", "resnet56", "vgg16"]
