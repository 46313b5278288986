"""Min-max (abs-max) uniform quantizer, the 8-bit quantizer of first and last layers.

APoT (Li et al., ICLR 2020) Sec. 4.1 and most QAT papers keep the first and last
layers at 8 bits. Forward::

    Q(x) = s * round(clip(x / s, -Qn, Qp)),   s = r / Qp

with r = max|x| of the current tensor (``observer="dynamic"``, the default for
weights) or a running average of the batch maxima seen in training, frozen in eval
(``observer="running"``, the default for activations). ``s`` is not learned; the
backward pass is the straight-through estimator: dQ/dx = 1 inside the range, else 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import STEP_FLOOR, Quantizer, compute_dtype, register_quantizer
from .init import absmax
from .lsq import lsq_fake_quant

OBSERVERS = ("dynamic", "running")


class _STERound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:  # type: ignore[override]
        ct = compute_dtype(x)
        v = x.to(ct) / step
        ctx.save_for_backward((v > -qn - 0.5) & (v < qp + 0.5))
        return lsq_fake_quant(x.to(ct), step.to(ct), qn, qp).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return g * inside, None, None, None


@register_quantizer("minmax")
class MinMaxQuantizer(Quantizer):
    """Abs-max uniform quantizer with a straight-through gradient (no learned parameters)."""

    supports_per_channel = True
    uniform_output = True
    init_methods = ("lsq", "mse", "minmax")

    def __init__(self, bits: int = 8, signed: bool = False, observer: str | None = None,
                 momentum: float = 0.1, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        if observer is None:
            observer = "dynamic" if signed else "running"
        if observer not in OBSERVERS:
            raise ValueError(f"observer={observer!r}; allowed: {', '.join(OBSERVERS)}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum!r}; allowed: a float in (0, 1]")
        self.observer = observer
        self.momentum = momentum
        self.register_buffer("range", torch.ones(self.param_shape()))

    @property
    def dynamic(self) -> bool:
        return self.observer == "dynamic"

    def _materialize_channels(self, channels: int) -> None:
        self.range = self.range.expand(channels).clone()

    def _step(self) -> Tensor:
        return (self.range / self.qp).clamp_min(STEP_FLOOR)

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        if self.observer == "dynamic":
            self.range.copy_(absmax(x.detach().float(), self.per_channel))
        elif self.training:
            self.range.lerp_(absmax(x.detach().float(), self.per_channel), self.momentum)

    def quantize(self, x: Tensor) -> Tensor:
        self._observe(x)
        step = self.channel_view(self._step(), x)
        return _STERound.apply(x, step, self.qn, self.qp)

    def levels(self) -> Tensor:
        grid = torch.arange(-self.qn, self.qp + 1, device=self.range.device, dtype=self.range.dtype)
        s = self._step()
        return s[:, None] * grid if s.dim() == 1 else s * grid

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        if self.observer == "dynamic":
            self._observe(x)
        step = self.channel_view(self._step(), x)
        return (x.to(compute_dtype(x)) / step).clamp_(-self.qn, self.qp).round_().add_(self.qn).to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        self.range.copy_(absmax(x, self.per_channel))
