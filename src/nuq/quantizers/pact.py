"""PACT: Parameterized Clipping Activation (Choi et al., 2018, arXiv:1805.06085).

Forward (PACT Eq. 1-2): clip to a learned threshold alpha, then quantize uniformly::

    y = clip(x, lo, alpha),   Q(x) = round(y * Qp / alpha) * alpha / Qp

unsigned (activations): lo = 0, Qp = 2^b - 1 steps over [0, alpha];
signed (an extension for weights, not in the PACT paper): symmetric lo = -alpha with
Qp = 2^(b-1) - 1 steps per side, i.e. the 2^b - 1 levels of the APoT paper's Eq. 2
(2-bit signed = ternary {-alpha, 0, alpha}).

Backward (PACT Eq. 3, with the STE for round; also APoT Appendix A.1, Eq. 11)::

    dQ/dalpha = 1 for x >= alpha, -1 for x <= -alpha (signed), 0 otherwise
    dQ/dx     = 1 for lo < x < alpha (0 <= x < alpha unsigned), 0 otherwise

Unlike the RCF (``apot.py``), elements inside the range do not contribute to the alpha
gradient. The gradient is summed over the elements that share alpha (times 1/sqrt(N*Qp)
with ``grad_scale="lsq"``). PACT's L2 regularisation of alpha is an optimiser setting
(weight decay on the quantizer parameter group), not part of the quantizer.

Initialisation: ``mse`` (init.mse_search), ``lsq`` (the LSQ range 2<|x|>sqrt(Qp), capped at
max|x|), ``const`` (alpha = 10, PACT's initial value, for activations; 3 for signed use,
which assumes normalised weights).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import STEP_FLOOR, Quantizer, compute_dtype, reduce_to_param, register_quantizer
from .initializers import absmax, mse_search
from .lsq import lsq_fake_quant


class _PACTFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, alpha: Tensor, qn: int, qp: int, gscale: float) -> Tensor:  # type: ignore[override]
        # step = alpha / Qp (broadcast against x), computed by the caller exactly as levels() does
        ct = compute_dtype(x)
        ctx.save_for_backward(x, alpha)
        ctx.signed, ctx.gscale = qn > 0, gscale
        return lsq_fake_quant(x.to(ct), step.to(ct), qn, qp).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        ct = compute_dtype(x)
        a = alpha.view((-1,) + (1,) * (x.dim() - 1)) if alpha.dim() == 1 else alpha
        v = x.to(ct) / a.to(ct)
        # d in {-1, 0, 1}: which side x was clipped on. trunc keeps (-1, 1) at 0 (signed);
        # floor sends x < 0 to -1 (unsigned: clipped at 0, which does not depend on alpha).
        d = (v.trunc_() if ctx.signed else v.floor_()).clamp_(-1, 1)
        grad_x = torch.where(d == 0, g, torch.zeros((), dtype=g.dtype, device=g.device))
        grad_a = None
        if ctx.needs_input_grad[2]:
            if not ctx.signed:
                d.clamp_(min=0)
            grad_a = (reduce_to_param(d.mul_(g.to(ct)), alpha) * ctx.gscale).to(alpha.dtype)
        return grad_x, None, grad_a, None, None, None


@register_quantizer("pact")
class PACTQuantizer(Quantizer):
    """Uniform quantizer on [0, alpha] (or [-alpha, alpha] signed) with PACT's alpha gradient."""

    supports_per_channel = True
    uniform_output = True
    init_methods = ("mse", "lsq", "const")

    def __init__(self, bits: int = 4, signed: bool = False, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        self.alpha = nn.Parameter(torch.ones(self.param_shape()))

    @property
    def _qn(self) -> int:
        # symmetric: as many negative as positive steps
        return self.qp if self.signed else 0

    def effective_alpha(self) -> Tensor:
        return self.alpha.clamp_min(STEP_FLOOR)

    def _step(self) -> Tensor:
        return self.effective_alpha() / self.qp

    def quantize(self, x: Tensor) -> Tensor:
        alpha = self.effective_alpha()
        step = self.channel_view(alpha / self.qp, x)
        return _PACTFunction.apply(x, step, alpha, self._qn, self.qp, self.grad_scale_factor(x))

    def levels(self) -> Tensor:
        s = self._step().detach()
        grid = torch.arange(-self._qn, self.qp + 1, device=s.device, dtype=s.dtype)
        return s[:, None] * grid if s.dim() == 1 else s * grid

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        ct = compute_dtype(x)
        s = self.channel_view(self._step(), x).to(ct)
        return (x.to(ct) / s).clamp_(-self._qn, self.qp).round_().add_(self._qn).to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        src = x if self.signed else x.clamp_min(0)
        top = absmax(src, self.per_channel).clamp_min(1e-6)
        if method == "const":
            a = torch.full(self.param_shape(), 3.0 if self.signed else 10.0)
        elif method == "lsq":
            flat = src.reshape(src.shape[0], -1) if self.per_channel else src.reshape(1, -1)
            a = torch.minimum(2 * flat.abs().mean(1).reshape(top.shape) * math.sqrt(self.qp), top)
        else:
            qn, qp = self._qn, self.qp
            a = mse_search(src, lambda v, sc: lsq_fake_quant(v, sc / qp, qn, qp), top, self.per_channel)
        self.alpha.data.copy_(a.clamp_min(1e-6).to(self.alpha))
