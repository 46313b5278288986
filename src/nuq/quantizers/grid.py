"""Level tables that are integers times one float32 scale.

* :func:`uniform_grid` -- ``levels == s * arange(kmin, kmax + 1)`` exactly (consecutive k):
  what a Q/DQ pair needs;
* :func:`integer_grid` -- ``levels == s * k`` for (not necessarily consecutive) integers k,
  e.g. DoReFa's 2-bit weights {-3, -1, 1, 3} / 3;
* :func:`level_grid` -- the same for a per-channel table [C, L] sharing one set of k.

Exactness is checked in float32, never assumed from a method's ``uniform_output``: these
grids decide where integer arithmetic may replace float arithmetic (eval-mode integer
layers, the ONNX integer layers, the packed format).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def uniform_grid(lv: Tensor) -> tuple[Tensor, int, int] | None:
    """(scale, kmin, kmax) with ``lv == scale * arange(kmin, kmax + 1)`` exactly in float32
    (scale a 0-d float32 tensor), or None when ``lv`` is not such a grid."""
    lv = lv.detach().float().cpu()
    n = lv.numel()
    if lv.dim() != 1 or n < 2:
        return None
    lv64 = lv.double()
    s_est = (lv64[-1] - lv64[0]) / (n - 1)
    if not s_est > 0:
        return None
    k = torch.round(lv64 / s_est)
    kmin = int(k[0])
    if not torch.equal(k, torch.arange(kmin, kmin + n, dtype=torch.float64)):
        return None
    kf = k.float()
    # try each level / its integer as the scale, the smallest |k| first (k = 1 gives the
    # step itself for LSQ-style tables built as step * grid)
    for i in sorted(range(n), key=lambda j: abs(int(k[j]))):
        if k[i] == 0:
            continue
        s = lv[i] / kf[i]
        if s > 0 and torch.equal(kf * s, lv):
            return s, kmin, kmin + n - 1
    return None



def integer_grid(lv: Tensor) -> tuple[Tensor, Tensor] | None:
    """(ints int64 [L], scale 0-d float32) with ``ints.float() * scale == lv`` exactly, the
    ints as small as possible and not necessarily consecutive (DoReFa's 2-bit weights are
    {-3, -1, 1, 3} / 3), or None."""
    lv = lv.detach().float().cpu()
    gaps = (lv[1:] - lv[:-1]).double()
    gaps = gaps[gaps > 0]
    if lv.dim() != 1 or gaps.numel() == 0:
        return None
    lv64 = lv.double()
    for d in (1, 2, 4):
        s_est = float(gaps.min()) / d
        m = torch.round(lv64 / s_est)
        if m.abs().max() > 2**15 or m[-1] == m[0]:
            continue
        # the smallest gap carries the float32 rounding of two levels; the full range does not
        s_est = float(lv64[-1] - lv64[0]) / float(m[-1] - m[0])
        m = torch.round(lv64 / s_est)
        if not bool(((lv64 / s_est - m).abs() < 1e-3).all()):
            continue
        g = math.gcd(*[int(v) for v in m])
        m = (m / g).round() if g > 1 else m
        mf = m.float()
        for i in sorted(range(lv.numel()), key=lambda j: abs(int(m[j]))):
            if m[i] == 0:
                continue
            s = lv[i] / mf[i]
            if s > 0 and torch.equal(mf * s, lv):
                return m.long(), s
    return None


def level_grid(lv: Tensor) -> tuple[Tensor, Tensor] | None:
    """(ints int64 [L], scale float32 0-d or [C]) with ``levels == ints * scale`` exactly,
    for a level table [L] or [C, L] (every row on the same integers), else None."""
    rows = lv if lv.dim() == 2 else lv[None]
    grids = [integer_grid(r) for r in rows]
    if any(g is None for g in grids) or any(not torch.equal(g[0], grids[0][0]) for g in grids):
        return None
    scale = torch.stack([g[1] for g in grids])
    return grids[0][0], (scale if lv.dim() == 2 else scale[0])
