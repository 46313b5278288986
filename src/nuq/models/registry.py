"""Model registry: ``@register_model(name)`` on a factory, ``create_model(name, ...)``.

``create_model("torchvision.resnet18")`` / ``create_model("timm.convnext_tiny")`` build
architectures of those libraries when installed (``pip install nuq[vision]`` /
``nuq[timm]``), untrained by default; the first convolution is rebuilt for
``in_channels`` other than 3.

Their trained weights: ``pretrained=True`` (the library's default weights, from its cache,
or downloaded by the library where the machine can), ``pretrained="path/to/weights.pth"``
(a state_dict file, loaded ``weights_only``), or torchvision's own ``weights=`` argument. A
classifier of another class count is replaced by a fresh one (with a warning naming it), and
a first convolution for ``in_channels`` other than 3 gets the trained filters summed over the
RGB inputs (repeated and rescaled for more than 3), the usual adaptation.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn.walk import set_module

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


def _first_conv_for(model: nn.Module, in_channels: int, adapt: bool = False) -> nn.Module:
    """Replace the first Conv2d by one taking ``in_channels`` inputs (same geometry). With
    ``adapt`` its trained filters carry over: summed over the inputs for one channel, the
    inputs repeated cyclically and rescaled by 3/in_channels otherwise."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_channels:
                return model
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                            1 if m.groups == m.in_channels and m.groups > 1 else m.groups, m.bias is not None)
            if adapt and m.groups == 1:
                with torch.no_grad():
                    new.weight.copy_(_adapt_filters(m.weight, in_channels))
                    if m.bias is not None:
                        new.bias.copy_(m.bias)
            set_module(model, name, new)
            return model
    raise ValueError("the model has no Conv2d whose input channels could be set")


def _adapt_filters(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Trained first-layer filters for ``in_channels`` inputs: summed over the trained
    inputs for one channel, else those inputs repeated cyclically and rescaled so that a
    constant image gives the same response."""
    if in_channels == 1:
        return w.sum(1, keepdim=True)
    idx = torch.arange(in_channels) % w.shape[1]
    return w[:, idx] * (w.shape[1] / in_channels)


def _external(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any],
              pretrained: bool | str | None) -> nn.Module:
    lib, _, arch = name.partition(".")
    path = _weights_file(name, pretrained)
    if path is not None:  # same for both libraries: build untrained, load the file
        model = _external(name, num_classes, in_channels, kwargs, None)
        _load_file(model, path, name)
        return model
    try:
        if lib == "torchvision":
            import torchvision

            if pretrained is True:
                kwargs = {"weights": "DEFAULT", **kwargs}
            kwargs.setdefault("weights", None)
            if kwargs["weights"] is None:
                model = torchvision.models.get_model(arch, num_classes=num_classes, **kwargs)
                return _first_conv_for(model, in_channels)
            # trained weights come with their own head: build that, then fit it to num_classes
            model = torchvision.models.get_model(arch, **kwargs)
            _fit_head(model, num_classes, name)
            return _first_conv_for(model, in_channels, adapt=True)
        import timm

        return timm.create_model(arch, pretrained=bool(pretrained), num_classes=num_classes, in_chans=in_channels,
                                 **kwargs)
    except ImportError as e:
        extra = "vision" if lib == "torchvision" else "timm"
        raise ValueError(f"model {name!r} needs the {lib} package: pip install 'nuq[{extra}]'") from e
    except (KeyError, RuntimeError, TypeError, ValueError, OSError) as e:
        what = f"with pretrained={pretrained!r} " if pretrained else ""
        raise ValueError(f"model {name!r}: {lib} cannot build {arch!r} {what}with {kwargs}: "
                         f"{' '.join(str(e).split())[:300]}") from e


def _check_counts(num_classes: int, in_channels: int) -> None:
    for arg, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg}={v!r}; allowed: a positive int")


def _weights_file(name: str, pretrained: bool | str | None) -> Path | None:
    """The state_dict file ``pretrained`` names for a torchvision/timm model, or None."""
    if pretrained is None or isinstance(pretrained, bool):
        return None
    if not isinstance(pretrained, (str, Path)):
        raise ValueError(f"pretrained={pretrained!r} for {name!r}; allowed: True, False or a weights file path")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ValueError(f"pretrained={str(pretrained)!r} for {name!r}: no such file (torchvision/timm models take "
                         "True for the library's own weights, or the path of a state_dict file)")
    return path


def _load_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a state_dict file into ``model`` exactly, except a classifier of another class
    count (left untrained, with a warning) and a first convolution of another input count
    (adapted from the file's filters)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that is not plain tensors, or not a torch file at all
        raise ValueError(f"pretrained={str(path)!r}: cannot read a state_dict from it "
                         f"({' '.join(str(e).split())[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained={str(path)!r}: not a state_dict file (a dict of tensors)")
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    head_name = _last_linear(model)
    first = f"{convs[0]}.weight" if convs else None
    head = {f"{head_name}.weight", f"{head_name}.bias"} if head_name is not None else set()
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    bad = [k for k in shape if k not in head and not (k == first and own[k].shape[2:] == state[k].shape[2:])]
    if missing or extra or bad:
        raise ValueError(f"pretrained={str(path)!r} does not fit {name!r}: missing {missing[:4]}, unexpected "
                         f"{extra[:4]}, other shapes {bad[:4]}")
    fresh = [k for k in shape if k in head]
    if fresh:
        warnings.warn(f"{name}: classifier {head_name!r} has {state[sorted(head)[-1]].shape[0]} classes in "
                      f"{path.name}; it stays untrained with {own[fresh[0]].shape[0]} outputs", stacklevel=4)
    if first in shape:
        state[first] = _adapt_filters(state[first], own[first].shape[1])
    model.load_state_dict({k: (own[k] if k in fresh else v) for k, v in state.items()})


def _fit_head(model: nn.Module, num_classes: int, name: str) -> None:
    """Replace the last Linear layer by a fresh one with ``num_classes`` outputs, if needed."""
    head_name = _last_linear(model)
    if head_name is None:
        raise ValueError(f"model {name!r} has no Linear classifier to fit to num_classes={num_classes}")
    head = model.get_submodule(head_name)
    if head.out_features == num_classes:
        return
    warnings.warn(f"{name}: classifier {head_name!r} ({head.out_features} classes in the trained weights) "
                  f"replaced by an untrained one with {num_classes} outputs", stacklevel=4)
    set_module(model, head_name, nn.Linear(head.in_features, num_classes, head.bias is not None))


def _last_linear(model: nn.Module) -> str | None:
    """Name of the model's last Linear layer in module order (its classifier), or None."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, pretrained: bool | str | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build the registered architecture ``name`` (or ``torchvision.<arch>`` / ``timm.<arch>``).

    ``pretrained``: for nuq's own models, the dataset of trained weights shipped with nuq
    (e.g. "fashion_mnist", see :mod:`nuq.models.pretrained`); the other arguments must match
    those weights, and architecture arguments left out take the shipped model's
    (``width=0.5`` for the shipped MobileNetV2). For torchvision/timm models, True (the
    library's weights) or a state_dict file path; torchvision's ``weights=`` also works."""
    if name.partition(".")[0] in EXTERNAL and "." in name:
        _check_counts(num_classes, in_channels)
        return _external(name, num_classes, in_channels, dict(kwargs), pretrained)
    if pretrained is not None and pretrained is not False:
        if not isinstance(pretrained, str):
            raise ValueError(f"pretrained={pretrained!r} for {name!r}; allowed: the name of a dataset with shipped "
                             "weights, e.g. 'fashion_mnist'")
        from .pretrained import check_arguments, load_pretrained, record

        check_arguments(name, pretrained, num_classes, in_channels, kwargs)
        kwargs = {**record(name, pretrained)["kwargs"], **kwargs}
        return load_pretrained(create_model(name, num_classes, in_channels, **kwargs), name, pretrained)
    _check_counts(num_classes, in_channels)
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(available_models())} "
                         "(or torchvision.<arch> / timm.<arch> with those packages installed)")
    fn = _MODELS[name]
    allowed = set(inspect.signature(fn).parameters) - {"num_classes", "in_channels"}
    bad = sorted(set(kwargs) - allowed)
    if bad:
        raise ValueError(f"model {name!r} takes no argument(s) {bad}; allowed: {sorted(allowed)}")
    return fn(num_classes=num_classes, in_channels=in_channels, **kwargs)
