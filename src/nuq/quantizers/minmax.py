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
from torch import Tensor, nn

from .base import STEP_FLOOR, Quantizer, compute_dtype, register_quantizer
from .initializers import absmax

OBSERVERS = ("dynamic", "running")


def codes_at(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """round(clip(x / s, -Qn, Qp)): the integer codes (as floats) of every minmax output;
    clamping before rounding equals rounding before clamping for integer bounds."""
    return torch.round(torch.clamp(x / step, -qn, qp))


def absmax_step(x: Tensor, qp: int, per_channel: bool) -> Tensor:
    """max|x| / Qp of the tensor (0-d), or of each channel on axis 0 (shaped to broadcast),
    floored at STEP_FLOOR."""
    step = (absmax(x, per_channel) / qp).clamp_min(STEP_FLOOR)
    return step.view((-1,) + (1,) * (x.dim() - 1)) if per_channel else step


class AbsMaxCodes(nn.Module):
    """The dynamic observer's whole computation, ``x -> (codes_at(x, s), s)`` with ``s`` from
    the current ``x``: what ``MinMaxQuantizer`` computes in every mode, and what ONNX export
    and the integer paths trace (one implementation, bit-identical everywhere)."""

    def __init__(self, qn: int, qp: int, per_channel: bool = False) -> None:
        super().__init__()
        self.qn, self.qp, self.per_channel = qn, qp, per_channel

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        step = absmax_step(x, self.qp, self.per_channel)
        return codes_at(x, step, self.qn, self.qp), step


class _STERound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:  # type: ignore[override]
        ct = compute_dtype(x)
        v = x.to(ct) / step
        ctx.save_for_backward((v > -qn - 0.5) & (v < qp + 0.5))
        return (codes_at(x.to(ct), step.to(ct), qn, qp) * step).to(x.dtype)

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
    config_fields = ("observer", "momentum")

    def __init__(self, bits: int = 8, signed: bool = False, observer: str | None = None,
                 momentum: float = 0.1, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        if observer is None:
            # weights are re-measured on every call; activations keep a running range frozen
            # in eval, so a prediction does not depend on the other images of its batch
            observer = "dynamic" if self.role == "weight" else "running"
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

    def dynamic_form(self) -> AbsMaxCodes | None:
        return AbsMaxCodes(self.qn, self.qp, self.per_channel) if self.dynamic else None

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        if self.observer == "dynamic":
            self.range.copy_(absmax(x.detach().float(), self.per_channel))  # copy_ casts
        elif self.training:
            # a batch maximum that is Inf/NaN must not enter the running range (it would
            # stay NaN for good): such a batch leaves the range as it was, without a host sync
            m = absmax(x.detach().float(), self.per_channel).to(self.range.dtype)  # the module may be .to(bf16)
            self.range.lerp_(torch.where(torch.isfinite(m), m, self.range), self.momentum)

    def _current_step(self, x: Tensor) -> Tensor:
        """The step for ``x``, broadcast against it; a dynamic observer measures it on x."""
        self._observe(x)
        if self.dynamic:
            return absmax_step(x.detach().to(compute_dtype(x)), self.qp, self.per_channel)
        return self.channel_view(self._step(), x)

    def quantize(self, x: Tensor) -> Tensor:
        return _STERound.apply(x, self._current_step(x), self.qn, self.qp)

    def levels(self) -> Tensor:
        grid = torch.arange(-self.qn, self.qp + 1, device=self.range.device, dtype=self.range.dtype)
        s = self._step()
        return s[:, None] * grid if s.dim() == 1 else s * grid

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        step = self._current_step(x) if self.dynamic else self.channel_view(self._step(), x)
        return codes_at(x.to(compute_dtype(x)), step, self.qn, self.qp).add_(self.qn).to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        self.range.copy_(absmax(x, self.per_channel))
