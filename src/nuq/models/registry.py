"""Model registry: ``@register_model(name)`` on a factory, ``create_model(name, ...)``.

``create_model("torchvision.resnet18")`` / ``create_model("timm.convnext_tiny")`` build
architectures of those libraries when installed (``pip install nuq[vision]`` /
``nuq[timm]``), untrained (nothing is downloaded); the first convolution is rebuilt for
``in_channels`` other than 3.
"""

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


EXTERNAL = ("torchvision", "timm")


def _first_conv_for(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first Conv2d by one taking ``in_channels`` inputs (same geometry)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            1 if m.groups == m.in_channels and m.groups > 1 else m.groups, m.bias is not None)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            return model
    raise ValueError("the model has no Conv2d whose input channels could be set")


def _external(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    lib, _, arch = name.partition(".")
    try:
        if lib == "torchvision":
            import torchvision

            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
            return _first_conv_for(model, in_channels)
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except ImportError as e:
        extra = "vision" if lib == "torchvision" else "timm"
        raise ValueError(f"model {name!r} needs the {lib} package: pip install 'nuq[{extra}]'") from e
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"model {name!r}: {lib} cannot build {arch!r} with {kwargs}: {e}") from e


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, pretrained: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build the registered architecture ``name`` (or ``torchvision.<arch>`` / ``timm.<arch>``).

    ``pretrained``: the dataset of trained weights shipped with nuq (e.g. "fashion_mnist",
    see :mod:`nuq.models.pretrained`); the other arguments must match those weights, and
    architecture arguments left out take the shipped model's (``width=0.5`` for the shipped
    MobileNetV2)."""
    if pretrained is not None:
        from .pretrained import check_arguments, load_pretrained, record

        check_arguments(name, pretrained, num_classes, in_channels, kwargs)
        kwargs = {**record(name, pretrained)["kwargs"], **kwargs}
        return load_pretrained(create_model(name, num_classes, in_channels, **kwargs), name, pretrained)
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg}={v!r}; allowed: a positive int")
    if name.partition(".")[0] in EXTERNAL and "." in name:
        return _external(name, num_classes, in_channels, kwargs)
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(available_models())} "
                         "(or torchvision.<arch> / timm.<arch> with those packages installed)")
    fn = _MODELS[name]
    allowed = set(inspect.signature(fn).parameters) - {"num_classes", "in_channels"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise ValueError(f"model {name!r} takes no argument(s) {bad}; allowed: {sorted(allowed)}")
    return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
