"""Weight normalisations applied to a layer's float weight before its weight quantizer.

``apot_wn`` -- APoT weight normalisation (Li, Dong & Wang, ICLR 2020, Sec. 2.4, Eq. 9)::

    W~ = (W - mu) / (sigma + eps),  mu = mean(W),  sigma = sqrt(mean((W - mu)^2))

over all I weights of the layer (population std, as Eq. 9 writes it), eps = 1e-5.
Differentiable: the gradient flows through mu and sigma (Algorithm 1, step 8). The
authors' code computes mu and sigma on ``weight.data`` (no gradient through the
statistics); ``detach_stats=True`` reproduces that.
A constant tensor (zero variance) gives (W - mu) / eps: zeros up to the rounding error of
the mean, never NaN; sigma's gradient is cut below a tiny variance, where sqrt has an
infinite derivative that would otherwise turn the 0/0 of a constant tensor into NaN.

``dorefa_tanh`` -- the normalisation inside DoReFa-Net's weight quantizer (Zhou et al.,
2016, Eq. 9): W' = tanh(W) / max|tanh(W)| in [-1, 1], to be followed by the signed
``dorefa`` quantizer (which computes 2 quantize_k((W' + 1) / 2) - 1). Differentiable,
including through the max. An all-zero tensor maps to zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import register_transform


@register_transform("apot_wn")
class APoTWeightNorm(nn.Module):
    """Eq. 9 of the APoT paper: zero mean, unit (population) variance per layer."""

    def __init__(self, eps: float = 1e-5, detach_stats: bool = False) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps={eps!r}; allowed: a positive float")
        self.eps = float(eps)
        self.detach_stats = bool(detach_stats)

    def forward(self, w: Tensor) -> Tensor:
        src = w.detach() if self.detach_stats else w
        var, mu = torch.var_mean(src, correction=0)
        # clamp_min passes no gradient below the floor: no inf * 0 at zero variance
        sigma = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
        return (w - mu) / (sigma + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}" + (", detach_stats=True" if self.detach_stats else "")


@register_transform("dorefa_tanh")
class DoReFaTanh(nn.Module):
    """DoReFa weight normalisation tanh(W) / max|tanh(W)|, mapping W into [-1, 1]."""

    def forward(self, w: Tensor) -> Tensor:
        t = torch.tanh(w)
        top = t.abs().amax().clamp_min(torch.finfo(t.dtype).tiny)
        return t / top
