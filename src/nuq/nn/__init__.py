"""Quantized layers and weight transforms."""

from .layers import QUANT_LAYERS, QuantConv2d, QuantLinear

__all__ = ["QUANT_LAYERS", "QuantConv2d", "QuantLinear"]
