"""Quantized convolution and linear layers.

``QuantConv2d`` and ``QuantLinear`` are drop-in subclasses of ``nn.Conv2d`` and
``nn.Linear`` that fake-quantize their *input* with ``act_quantizer`` and their weight
with ``weight_quantizer`` (after an optional differentiable ``weight_transform``, e.g.
APoT weight normalization). Either quantizer may be ``None`` (kept float). A layer knows
nothing of training; the quantizers know nothing of layers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizers import Quantizer


class _QuantMixin:
    weight: Tensor
    weight_quantizer: Quantizer | None
    act_quantizer: Quantizer | None
    weight_transform: nn.Module | None

    def _attach(self, weight_quantizer, act_quantizer, weight_transform) -> None:
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer
        self.weight_transform = weight_transform

    def float_weight(self) -> Tensor:
        """The weight after the transform, before quantization."""
        w = self.weight
        return self.weight_transform(w) if self.weight_transform is not None else w

    def quantized_weight(self) -> Tensor:
        w = self.float_weight()
        return self.weight_quantizer(w) if self.weight_quantizer is not None else w

    def quantize_input(self, x: Tensor) -> Tensor:
        return self.act_quantizer(x) if self.act_quantizer is not None else x

    @classmethod
    def _copy_float(cls, layer: nn.Module, new: nn.Module) -> nn.Module:
        new.weight = layer.weight
        new.bias = layer.bias
        return new


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input and weight."""

    def __init__(self, *args, weight_quantizer: Quantizer | None = None, act_quantizer: Quantizer | None = None,
                 weight_transform: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, act_quantizer, weight_transform)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantize_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer: Quantizer | None = None,
                   act_quantizer: Quantizer | None = None, weight_transform: nn.Module | None = None) -> QuantConv2d:
        """Wrap ``conv``; the new layer shares its weight and bias tensors."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
                  weight_quantizer=weight_quantizer, act_quantizer=act_quantizer, weight_transform=weight_transform)
        return cls._copy_float(conv, new)


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized input and weight."""

    def __init__(self, *args, weight_quantizer: Quantizer | None = None, act_quantizer: Quantizer | None = None,
                 weight_transform: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._attach(weight_quantizer, act_quantizer, weight_transform)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: Quantizer | None = None,
                   act_quantizer: Quantizer | None = None, weight_transform: nn.Module | None = None) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, weight_quantizer=weight_quantizer,
                  act_quantizer=act_quantizer, weight_transform=weight_transform)
        return cls._copy_float(linear, new)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
