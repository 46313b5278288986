"""DoReFa-Net quantizers (Zhou et al., 2016, arXiv:1606.06160), fixed range, no parameters.

DoReFa's k-bit quantizer is quantize_k(r) = round((2^k - 1) r) / (2^k - 1) on r in [0, 1]
(Eq. 5). Activations (``signed=False``, Eq. 11)::

    Q(x) = quantize_k(clip(x, 0, 1))                      levels {0, 1/n, ..., 1}, n = 2^k - 1

Weights (``signed=True``, Eq. 9)::

    Q(w') = 2 * quantize_k((clip(w', -1, 1) + 1) / 2) - 1     levels {-1, -1 + 2/n, ..., 1}

i.e. 2^k levels, symmetric, without 0. Eq. 9 feeds it w' = tanh(w) / max|tanh(w)| (written
there as tanh(w) / (2 max|tanh(w)|) + 1/2 inside quantize_k); that normalisation is the
weight transform ``dorefa_tanh`` (``nuq.nn.transforms.weight_norm``), applied by the layer
before this quantizer, exactly as APoT's weight normalisation is. Keeping it out of the
quantizer keeps the quantizer a projection (idempotent, ``levels()`` exact); use
``QATConfig(weight="dorefa", weight_transform="dorefa_tanh")`` for DoReFa's weights.

Backward: straight-through estimator for round; the clip passes the gradient inside its
range: dQ/dx = 1 for lo <= x <= 1, else 0 (the gradient of tanh and of the max reaches the
float weights through the transform). There is nothing to initialise: every init method
is accepted and does nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Quantizer, compute_dtype, register_quantizer


def _unit_grid(r: Tensor, n: int, signed: bool) -> Tensor:
    """Integer-valued r in 0..n -> level values; one arithmetic path for forward and levels().

    The integer ``2r - n`` (signed) or ``r`` times the float32 ``1/n``: the levels are then
    exactly integers times one scale, which integer arithmetic needs (``(r/n)*2 - 1`` is the
    same value up to float32 rounding, but not an exact grid)."""
    k = r.mul_(2).sub_(n) if signed else r
    return k.mul_(1.0 / n)


class _DoReFaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, n: int, signed: bool) -> Tensor:  # type: ignore[override]
        ct = compute_dtype(x)
        lo = -1.0 if signed else 0.0
        ctx.save_for_backward(x)
        ctx.lo = lo
        c = x.to(ct).clamp(lo, 1.0)
        r = c.add_(1).mul_(n / 2) if signed else c.mul_(n)
        return _unit_grid(r.round_(), n, signed).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        inside = (x >= ctx.lo) & (x <= 1.0)
        return torch.where(inside, g, torch.zeros((), dtype=g.dtype, device=g.device)), None, None


@register_quantizer("dorefa")
class DoReFaQuantizer(Quantizer):
    default_weight_transform = "dorefa_tanh"  # DoReFa Eq. 9: tanh-normalised weights
    """Fixed-range uniform quantizer of DoReFa-Net: [0, 1] (activations) or [-1, 1] with
    2^b levels (weights, after the ``dorefa_tanh`` transform)."""

    uniform_output = True
    init_methods = ("none", "lsq", "mse")

    def __init__(self, bits: int = 4, signed: bool = False, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        # no parameters: this empty buffer carries the module's device and float dtype for levels()
        self.register_buffer("_ref", torch.zeros(()), persistent=False)
        self.mark_initialized()  # nothing is learned or measured

    @property
    def n(self) -> int:
        return 2**self.bits - 1

    def quantize(self, x: Tensor) -> Tensor:
        return _DoReFaFunction.apply(x, self.n, self.signed)

    def levels(self) -> Tensor:
        r = torch.arange(self.n + 1, device=self._ref.device, dtype=self._ref.dtype)
        return _unit_grid(r, self.n, self.signed)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        ct = compute_dtype(x)
        c = x.to(ct).clamp(-1.0 if self.signed else 0.0, 1.0)
        r = c.add_(1).mul_(self.n / 2) if self.signed else c.mul_(self.n)
        return r.round_().to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        pass  # nothing to learn or calibrate
