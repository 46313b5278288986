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

from . import layout
from .base import STEP_FLOOR, Quantizer, compute_dtype, register_quantizer
from .initializers import absmax, lsq_step, mse_search
from .unrolled import compiling


def lsq_fake_quant(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """Plain (non-differentiable) LSQ fake quantization; step broadcasts against x."""
    return (x / step).clamp_(-qn, qp).round_().mul_(step)


def fused_fake_quant(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """round(clip(x/s, -Qn, Qp)) * s in one fused pass (PyTorch's fake-quant kernel;
    clamping after rounding is the same thing for integer bounds). step: () or [C]."""
    if step.dim() == 0:
        zp = torch.zeros((), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, step.to(torch.float32), zp, -qn, qp)
    zp = torch.zeros(step.shape, dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_channel_affine(x, step.to(torch.float32), zp, 0, -qn, qp)


def _dot(a: Tensor, b: Tensor, per_channel: bool) -> Tensor:
    """sum(a*b) per tensor, or per channel (axis 0), without a full-size temporary."""
    if not per_channel:
        return layout.dot(a, b)
    a2, b2 = a.reshape(a.shape[0], 1, -1), b.reshape(b.shape[0], -1, 1)
    return torch.bmm(a2, b2).reshape(-1)


def fused_formula(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """What ``fused_fake_quant`` computes, clamp(round(x * (1/s))) * s, as plain ops that
    inductor fuses with its neighbours (PyTorch's fake-quant kernel is an opaque call)."""
    return torch.round(x * torch.reciprocal(step)).clamp(-qn, qp) * step


class _LSQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int, gscale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, step)
        ctx.qn, ctx.qp, ctx.gscale = qn, qp, gscale
        fp32 = x.dtype == torch.float32 and step.dtype == torch.float32
        if fp32 and not compiling():
            return fused_fake_quant(x, step, qn, qp)
        ct = compute_dtype(x)
        s = step.view((-1,) + (1,) * (x.dim() - 1)) if step.dim() else step
        if fp32:
            return fused_formula(x, s, qn, qp)
        return lsq_fake_quant(x.to(ct), s.to(ct), qn, qp).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, step = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        per_channel = step.dim() == 1
        ct = compute_dtype(x)
        s = step.view((-1,) + (1,) * (x.dim() - 1)) if per_channel else step
        v = x.to(ct) / s.to(ct)
        c = v.clamp(-qn, qp)
        # inside <=> not clipped: -Qn < v <= Qp (the lower edge counts as clipped, Eq. 4)
        inside = (c == v) & (v != -qn)
        grad_x = g * inside
        g32 = g.to(ct)
        if compiling():
            # one fused loop: the same sum as below, written as a plain reduction
            w = g32 * (c.round() - torch.where(inside, c, 0))
            grad_s = w.reshape(w.shape[0], -1).sum(1) if per_channel else w.sum()
        else:
            # Eq. 4 summed over elements: sum g*round(c) - sum g*v*1[inside] = <g, round(c)> - <grad_x, c>
            grad_s = _dot(g32, c.round(), per_channel) - _dot(grad_x.to(ct), c, per_channel)
        return grad_x, (grad_s * ctx.gscale).to(step.dtype), None, None, None


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
        return _LSQFunction.apply(x, self.effective_step(), self.qn, self.qp, self.grad_scale_factor(x))

    def levels(self) -> Tensor:
        grid = torch.arange(-self.qn, self.qp + 1, device=self.step.device, dtype=self.step.dtype)
        s = self.effective_step().detach()
        return s[:, None] * grid if s.dim() == 1 else s * grid

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        # from the forward output, so codes agree with forward() bit for bit
        s = self.channel_view(self.effective_step(), x)
        code = (self.quantize(x).to(compute_dtype(x)) / s).round_().add_(self.qn)
        return code.to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        if method == "lsq":
            s = lsq_step(x, self.qp, self.per_channel)
        else:
            qn, qp = self.qn, self.qp
            s = mse_search(x, lambda v, sc: lsq_fake_quant(v, sc / max(qp, 1), qn, qp), absmax(x, self.per_channel),
                           self.per_channel) / max(qp, 1)
        self.step.data.copy_(s.to(self.step))
