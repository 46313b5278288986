"""N2UQ weight quantizer F_Q (Liu et al., CVPR 2022, Sec. 3.2.3 and appendix A).

Forward (appendix A, with n = bits and m = 2^n - 1)::

    F_Q(w) = round((clip(w, -1, 1) + 1) * m / 2) * 2 / m - 1

a uniform grid of 2^n levels on [-1, 1] that excludes zero: {+-1/3, +-1} at 2 bits,
i.e. {+-0.5, +-1.5, ...} * (2/m). It has no learned parameter: the paper puts the
scale into the weight instead, with the entropy-preserving regularization
W' = 2^(n-1)/(2^n - 1) * (|W| / ||W||_1) * W applied before F_Q (the ``n2uq_entropy``
weight transform, ``nuq.nn.transforms.entropy_scale``), so that the quantized weights
of every filter spread evenly over all 2^n levels.

Backward: straight-through estimator of the clipped input, dF_Q/dw = 1 for -1 <= w <= 1
and 0 outside.

The level set is the same for ``signed=False``; the quantizer is meant for weights
(signed), and unsigned inputs simply never reach the negative half of the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Quantizer, compute_dtype, register_quantizer


def n2uq_weight_codes(w: Tensor, m: int) -> Tensor:
    """round((clip(w, -1, 1) + 1) * m / 2): integer codes 0..m as floats."""
    return (w.clamp(-1, 1) + 1).mul_(m / 2).round_()


def n2uq_weight_from_codes(codes: Tensor, m: int) -> Tensor:
    """Codes 0..m -> levels: the odd integer 2c - m times the float32 1/m, so the levels are
    exactly integers times one scale (what integer arithmetic needs; c * 2/m - 1 is the same
    value up to float32 rounding, but not an exact grid)."""
    return (codes * 2 - m).mul_(1.0 / m)


class _FQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, m: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w)
        ct = compute_dtype(w)
        return n2uq_weight_from_codes(n2uq_weight_codes(w.to(ct), m), m).to(w.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (w,) = ctx.saved_tensors
        inside = (w >= -1) & (w <= 1)
        return torch.where(inside, g, torch.zeros((), dtype=g.dtype, device=g.device)), None


@register_quantizer("n2uq_w")
class N2UQWeightQuantizer(Quantizer):
    """The N2UQ weight quantizer F_Q: 2^b evenly spaced levels on [-1, 1], no zero."""

    default_weight_transform = "n2uq_entropy"  # N2UQ appendix A: entropy-preserving scaling
    init_methods = ("const",)
    roles = ("weight",)

    def __init__(self, bits: int = 2, signed: bool = True, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        self.mark_initialized()  # nothing to initialise: skip the base class's lazy "lsq" init

    def quantize(self, x: Tensor) -> Tensor:
        return _FQFunction.apply(x, 2**self.bits - 1)

    def levels(self) -> Tensor:
        m = 2**self.bits - 1
        return n2uq_weight_from_codes(torch.arange(m + 1, dtype=torch.float32, device=self.initialized.device), m)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return n2uq_weight_codes(x.to(compute_dtype(x)), 2**self.bits - 1).to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        """Nothing to learn or initialise (the scale lives in the weight transform)."""
