"""Data-driven initialisation shared by the quantizers.

* LSQ init (Esser et al., 2020): s = 2 <|x|> / sqrt(Qp).
* MSE init (the nuLSQ supplement's "MSE-base initialization", after UniQ): the scale
  that minimises || Q(x; s) - x ||^2 over the sample, found by a coarse grid over
  (0, max|x|] followed by a finer grid around the best coarse point. Works for any
  quantizer given as a function of (x, scale), per tensor or per channel (axis 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

#: Most elements per channel used by the search; larger samples are subsampled with a
#: fixed generator so that every process picks the same elements.
MAX_SAMPLE = 1 << 16


def subsample(x: Tensor, per_channel: bool, limit: int = MAX_SAMPLE) -> Tensor:
    """Flatten x to [M] (or [C, M] per channel), keeping at most ``limit`` elements per row."""
    flat = x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)
    m = flat.shape[1]
    if m > limit:
        g = torch.Generator(device="cpu").manual_seed(0)
        idx = torch.randperm(m, generator=g)[:limit].to(flat.device)
        flat = flat[:, idx]
    return flat


def lsq_step(x: Tensor, qp: int, per_channel: bool) -> Tensor:
    """LSQ init 2<|x|>/sqrt(Qp), per tensor () or per channel [C]."""
    flat = x.reshape(x.shape[0], -1) if per_channel else x.reshape(1, -1)
    s = 2 * flat.abs().mean(1) / math.sqrt(max(qp, 1))
    s = s.clamp_min(1e-6)
    return s if per_channel else s[0]


def mse_search(
    x: Tensor,
    quant: Callable[[Tensor, Tensor], Tensor],
    upper: Tensor,
    per_channel: bool,
    num: int = 64,
) -> Tensor:
    """Scale in (0, upper] minimising the quantization MSE of ``quant(x, scale)``.

    ``quant`` receives x as [R, M] and a scale of shape [R, 1]; R is 1 per tensor and C
    per channel. ``upper`` is () or [C]. Returns () or [C].
    """
    flat = subsample(x, per_channel)
    up = upper.reshape(-1, 1).expand(flat.shape[0], 1).clamp_min(1e-8)

    def search(lo_frac: Tensor, hi_frac: Tensor) -> Tensor:
        best_err = torch.full((flat.shape[0],), float("inf"), device=flat.device)
        best = hi_frac.clone()
        for t in torch.linspace(0, 1, num).tolist():
            frac = lo_frac + (hi_frac - lo_frac) * t
            err = (quant(flat, up * frac) - flat).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better[:, None], frac, best)
        return best

    ones = torch.ones_like(up)
    coarse = search(ones * 0.01, ones)
    width = 1.0 / num
    fine = search((coarse - width).clamp_min(0.005), (coarse + width).clamp_max(1.0))
    scale = (up * fine).reshape(-1)
    return scale if per_channel else scale[0]


def absmax(x: Tensor, per_channel: bool) -> Tensor:
    """max |x| per tensor () or per channel [C]."""
    # a reduction over dims, not over a reshape: no copy of a channels_last tensor
    if not per_channel:
        return x.abs().amax()
    return x.abs().amax(dim=tuple(range(1, x.dim()))) if x.dim() > 1 else x.abs()  # amax(dim=()) is over all
