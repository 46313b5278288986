"""Walking a model: its quantized layers, its quantizers, the float layers ``prepare``
would swap, and replacing a submodule by name."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from ..quantizers import Quantizer
from .layers import QUANT_LAYERS


def quant_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every quantized layer (QuantConv2d / QuantLinear)."""
    for name, m in model.named_modules():
        if isinstance(m, QUANT_LAYERS):
            yield name, m


def named_quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """(name, quantizer) of every quantizer in the model."""
    for name, m in model.named_modules():
        if isinstance(m, Quantizer):
            yield name, m


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters owned by quantizers (their own optimiser group)."""
    return [p for _, q in named_quantizers(model) for p in q.parameters(recurse=False)]


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(trainable parameters that are not a quantizer's, quantizer parameters)."""
    qparams = quantizer_parameters(model)
    qids = {id(p) for p in qparams}
    return [p for p in model.parameters() if id(p) not in qids and p.requires_grad], qparams


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0, q_lr_mult: float = 0.01,
                 q_weight_decay: float = 0.0) -> list[dict]:
    """Optimiser parameter groups for a prepared model: the weights at ``lr`` and
    ``weight_decay``, the quantizer parameters (steps, clipping ranges, thresholds) at
    ``lr * q_lr_mult`` without weight decay by default -- the split ``nuq train`` makes::

        opt = torch.optim.SGD(nuq.param_groups(qmodel, lr=0.01, weight_decay=5e-4), momentum=0.9)

    Quantizer parameters are step sizes of order 0.01-1 that set every level at once; at
    the weights' learning rate a few SGD steps can move them by orders of magnitude."""
    for name, v in (("lr", lr), ("weight_decay", weight_decay), ("q_lr_mult", q_lr_mult),
                    ("q_weight_decay", q_weight_decay)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (name == "lr" and v == 0):
            raise ValueError(f"{name}={v!r}; allowed: a {'positive' if name == 'lr' else 'non-negative'} number")
    weights, qparams = split_parameters(model)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    if qparams:
        groups.append({"params": qparams, "lr": lr * q_lr_mult, "weight_decay": q_weight_decay})
    return groups


def float_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every nn.Conv2d / nn.Linear not yet quantized, in module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QUANT_LAYERS)]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
