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


def float_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every nn.Conv2d / nn.Linear not yet quantized, in module order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QUANT_LAYERS)]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
