"""LSQ: Learned Step Size Quantization (Esser et al., ICLR 2020).

Forward (nuLSQ supplement Eq. 1, written as a sum of step functions)::

    Q(x; s) = s * round(clip(x / s, -Qn, Qp))

Backward (supplement Eq. 4; clipping is decided *before* rounding)::

    dQ/ds = Q(x)/s - (x/s) * 1[-Qn*s < x <= Qp*s]
          = -Qn (x/s <= -Qn),  round(x/s) - x/s (inside),  Qp (x/s > Qp)
    dQ/dx = 1[-Qn*s < x <= Qp*s]        (straight-through estimator)

The step gradient is summed over the elements sharing a step and multiplied by
1/sqrt(N*Qp) when ``grad_scale="lsq"``. One elementwise pass each way; the backward
recomputes x/s instead of saving anything larger than the input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import STEP_FLOOR, Quantizer, compute_dtype, reduce_to_param, register_quantizer
from .init import absmax, lsq_step, mse_search


def lsq_fake_quant(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """Plain (non-differentiable) LSQ fake quantization; step broadcasts against x."""
    return (x / step).clamp_(-qn, qp).round_().mul_(step)


class _LSQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int, gscale: float, per_channel: bool) -> Tensor:  # type: ignore[override]
        s = step.view((-1,) + (1,) * (x.dim() - 1)) if per_channel else step
        ctx.save_for_backward(x, step)
        ctx.qn, ctx.qp, ctx.gscale, ctx.per_channel = qn, qp, gscale, per_channel
        ct = compute_dtype(x)
        return lsq_fake_quant(x.to(ct), s.to(ct), qn, qp).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, step = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        s = step.view((-1,) + (1,) * (x.dim() - 1)) if ctx.per_channel else step
        ct = compute_dtype(x)
        v = x.to(ct) / s.to(ct)
        inside = (v > -qn) & (v <= qp)
        g32 = g.to(ct)
        grad_x = torch.where(inside, g, torch.zeros((), dtype=g.dtype, device=g.device))
        # Eq. 4: Q/s - (x/s)*1[inside]; Q/s is round(clip(v)).
        dq_ds = v.clamp(-qn, qp).round_().sub_(torch.where(inside, v, torch.zeros((), device=v.device)))
        grad_s = reduce_to_param(dq_ds.mul_(g32), step) * ctx.gscale
        return grad_x, grad_s.to(step.dtype), None, None, None, None


@register_quantizer("lsq")
class LSQQuantizer(Quantizer):
    """Uniform quantizer with one learned step size (per tensor or per channel)."""

    supports_per_channel = True
    uniform_output = True

    def __init__(self, bits: int = 4, signed: bool = False, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        self.step = nn.Parameter(torch.ones(self.param_shape()))

    def effective_step(self) -> Tensor:
        """The step used in the forward pass (floored so it never reaches zero)."""
        return self.step.clamp_min(STEP_FLOOR)

    def quantize(self, x: Tensor) -> Tensor:
        return _LSQFunction.apply(
            x, self.effective_step(), self.qn, self.qp, self.grad_scale_factor(x), self.step.dim() == 1
        )

    def levels(self) -> Tensor:
        grid = torch.arange(-self.qn, self.qp + 1, device=self.step.device, dtype=self.step.dtype)
        s = self.effective_step().detach()
        return s[:, None] * grid if s.dim() == 1 else s * grid

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        ct = compute_dtype(x)
        s = self.channel_view(self.effective_step(), x).to(ct)
        code = (x.to(ct) / s).clamp_(-self.qn, self.qp).round_().add_(self.qn)
        return code.to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        if method == "lsq":
            s = lsq_step(x, self.qp, self.per_channel)
        else:
            qn, qp = self.qn, self.qp
            s = mse_search(x, lambda v, sc: lsq_fake_quant(v, sc / max(qp, 1), qn, qp), absmax(x, self.per_channel),
                           self.per_channel) / max(qp, 1)
        self.step.data.copy_(s.to(self.step))
