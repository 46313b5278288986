"""Model registry: ``@register_model(name)`` on a factory, ``create_model(name, ...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def available_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build the registered architecture ``name``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(available_models())}")
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg}={v!r}; allowed: a positive int")
    fn = _MODELS[name]
    allowed = set(inspect.signature(fn).parameters) - {"num_classes", "in_channels"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise ValueError(f"model {name!r} takes no argument(s) {bad}; allowed: {sorted(allowed)}")
    return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
