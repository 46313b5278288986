"""Weight transforms: differentiable maps applied to a layer's float weight before its
weight quantizer (APoT weight normalization, N2UQ entropy-preserving scaling, ...).

A transform is an ``nn.Module`` taking the weight tensor [out, in, ...] and returning a
tensor of the same shape. Register one with ``@register_transform("name")`` in its own
file of this package; ``make_transform(name, **kwargs)`` builds it by name. What a
transform needs to know of its layer (e.g. the weight bit width) it names in its class
attribute ``needs``; ``make_transform(name, context={...})`` passes it those entries of the
layer context and no others, so callers hand every transform the same context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_TRANSFORMS: dict[str, type[nn.Module]] = {}


def register_transform(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _TRANSFORMS and _TRANSFORMS[name] is not cls:
            raise ValueError(f"weight transform {name!r} is already registered")
        _TRANSFORMS[name] = cls
        return cls

    return deco


def available_transforms() -> list[str]:
    return sorted(_TRANSFORMS)


def make_transform(name: str, context: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build transform ``name`` with ``kwargs``, plus the entries of the layer ``context``
    (e.g. ``{"bits": 2}``) that its class lists in ``needs``."""
    if name not in _TRANSFORMS:
        known = ", ".join(available_transforms()) or "none"
        raise ValueError(f"unknown weight transform {name!r}; registered: {known}")
    cls = _TRANSFORMS[name]
    needs = getattr(cls, "needs", ())
    context = context or {}
    return cls(**{k: context[k] for k in needs if k in context and k not in kwargs}, **kwargs)
