"""Quantized convolution and linear layers.

``QuantConv2d`` and ``QuantLinear`` are drop-in subclasses of ``nn.Conv2d`` and
``nn.Linear`` that fake-quantize their *input* with ``act_quantizer`` and their weight
with ``weight_quantizer`` (after an optional differentiable ``weight_transform``, e.g.
APoT weight normalization). Either quantizer may be ``None`` (kept float). A layer knows
nothing of training; the quantizers know nothing of layers.

In eval mode a layer whose two level tables are integer grids computes on the integer
codes and rescales once (:mod:`nuq.nn.integer_eval`): the same value up to float32
rounding, and the same bits on every backend. ``layer.integer_eval = False`` turns it off.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizers import Quantizer
from .integer_eval import IntegerOperands, integer_operands


class _QuantMixin:
    weight: Tensor
    weight_quantizer: Quantizer | None
    act_quantizer: Quantizer | None
    weight_transform: nn.Module | None
    bias: Tensor | None
    #: eval mode computes on integer codes where both tables allow it (see integer_eval)
    integer_eval: bool = True

    def _integer(self, x: Tensor) -> IntegerOperands | None:
        if self.training or not self.integer_eval:
            return None
        return integer_operands(self, x)

    def _rescale(self, acc: Tensor, ops: IntegerOperands, channel_axis: int) -> Tensor:
        """Integer accumulator times s_a * s_w, plus the bias (output channels on
        ``channel_axis``: 1 for a convolution, -1 for a linear layer)."""
        shape = [1] * acc.dim()
        shape[channel_axis] = -1
        s = ops.scale.view(shape) if ops.scale.dim() else ops.scale
        y = acc * s
        return y if self.bias is None else y + self.bias.view(shape)

    def __init__(self, *args, weight_quantizer: Quantizer | None = None, act_quantizer: Quantizer | None = None,
                 weight_transform: nn.Module | None = None, **kwargs) -> None:
        # the float layer's own arguments go on to nn.Conv2d / nn.Linear (next in the MRO)
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
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

    def forward(self, x: Tensor) -> Tensor:
        ops = self._integer(x)
        if ops is not None:
            return self._rescale(self._conv_forward(ops.act, ops.weight, None), ops, 1)
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

    def forward(self, x: Tensor) -> Tensor:
        ops = self._integer(x)
        if ops is not None:
            return self._rescale(F.linear(ops.act, ops.weight), ops, -1)
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: Quantizer | None = None,
                   act_quantizer: Quantizer | None = None, weight_transform: nn.Module | None = None) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, weight_quantizer=weight_quantizer,
                  act_quantizer=act_quantizer, weight_transform=weight_transform)
        return cls._copy_float(linear, new)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
