"""The forward and backward passes of the RCF quantizers (APoT Eq. 7 and Eq. 8): the
eager form that gathers levels from a per-cell table and a saved int16 cell, and the
unrolled form that ``torch.compile`` fuses into one loop per pass. The quantizers
themselves, their level sets and the cell maps are in :mod:`nuq.quantizers.rcf`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import layout, unrolled
from .base import compute_dtype


def _rowdot(a: Tensor, b: Tensor, per_channel: bool) -> Tensor:
    """sum(a * b) per tensor, or per row of axis 0, without an elementwise temporary when possible."""
    if per_channel:
        return (a.reshape(a.shape[0], -1) * b.reshape(b.shape[0], -1)).sum(1)
    if unrolled.compiling():  # a plain reduction fuses with the elementwise work around it; dot does not
        return (a * b).sum()
    return layout.dot(a, b)


class _RCFFunction(torch.autograd.Function):
    """Gather of the per-cell level table with the Eq. 8 backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, key: Tensor, lut_val: Tensor, lo: float,  # type: ignore[override]
                gscale: float, small_key: bool, pass_all: bool) -> Tensor:
        ct = compute_dtype(x)
        a = alpha.to(ct)
        st = layout.layout(x)  # the gathers run in x's memory order (channels_last kept)
        flat = layout.flat_in(key, st)
        if alpha.dim() == 0:
            # scale the (tiny) table, not the output: one pass fewer, and each output value is
            # bitwise equal to alpha * level as ``levels()`` computes it
            y = layout.unflat((lut_val * a).index_select(0, flat), x.shape, st)
        else:
            y = layout.unflat(lut_val.index_select(0, flat), x.shape, st).mul_(a.view((-1,) + (1,) * (x.dim() - 1)))
        ctx.save_for_backward(x, alpha, key.to(torch.int16) if small_key else key, lut_val)
        ctx.gscale, ctx.lo, ctx.pass_all = gscale, lo, pass_all
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, alpha, key, lut_val = ctx.saved_tensors
        st = layout.layout(x)
        flat = layout.flat_in(key, st)
        if flat.dtype == torch.int16:
            flat = flat.to(torch.int32)
        ins = _inside(x, alpha, ctx.lo)
        gin = torch.where(ins, g, 0)
        grad_a = None
        if ctx.needs_input_grad[1]:
            ct = compute_dtype(x)
            per_channel = alpha.dim() == 1
            g32 = g.to(ct)
            # Eq. 8 summed: sum g*Pi(x/alpha) - sum g*1[inside]*x / alpha  (Pi = +-1 or 0 outside)
            proj = _rowdot(g32, layout.unflat(lut_val.index_select(0, flat), g.shape, st), per_channel)
            lin = _rowdot(gin.to(ct), x.to(ct), per_channel)
            grad_a = ((proj - lin / alpha.to(ct)) * ctx.gscale).to(alpha.dtype)
        return g if ctx.pass_all else gin, grad_a, None, None, None, None, None, None


class _RCFUnrolledFunction(torch.autograd.Function):
    """The RCF pass under torch.compile: the level index and the inside flag follow from a
    uint8 cell found by comparisons, the level by a select chain (``unrolled.take``), so the
    compiled loops stay vectorised (a table gather would not) and save one byte per element."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, cell: Tensor, table: Tensor, top: int, gscale: float,  # type: ignore[override]
                lo: float, pass_all: bool) -> Tensor:
        ct = compute_dtype(x)
        a = alpha.to(ct)
        lvl = _unrolled_level(cell, top)
        if alpha.dim() == 0:
            y = unrolled.take(table.to(ct) * a, lvl)
        else:
            y = unrolled.take(table.to(ct), lvl) * a.view((-1,) + (1,) * (x.dim() - 1))
        ctx.save_for_backward(x, alpha, cell, table)
        ctx.top, ctx.gscale, ctx.lo, ctx.pass_all = top, gscale, lo, pass_all
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, alpha, cell, table = ctx.saved_tensors
        lvl, ins = _unrolled_level(cell, ctx.top), _inside(x, alpha, ctx.lo)
        grad_x = torch.where(ins, g, 0)
        grad_a = None
        if ctx.needs_input_grad[1]:
            ct = compute_dtype(x)
            # Eq. 8 summed: sum g*Pi(x/alpha) - sum g*1[inside]*x / alpha, in one loop
            gc = g.to(ct)
            proj = unrolled.take(table.to(ct), lvl)
            per_channel = alpha.dim() == 1
            w1, w2 = gc * proj, torch.where(ins, gc * x.to(ct), 0)
            if per_channel:
                s1, s2 = w1.reshape(w1.shape[0], -1).sum(1), w2.reshape(w2.shape[0], -1).sum(1)
            else:
                s1, s2 = w1.sum(), w2.sum()
            grad_a = ((s1 - s2 / alpha.to(ct)) * ctx.gscale).to(alpha.dtype)
        return g if ctx.pass_all else grad_x, grad_a, None, None, None, None, None, None


def _unrolled_level(cell: Tensor, top: int) -> Tensor:
    """Level index from cell = number of [lo, midpoints, 1] below x/alpha (cells are (a, b]:
    ties go to the lower level)."""
    return (cell.to(torch.int32) - 1).clamp(0, top)


def _inside(x: Tensor, alpha: Tensor, lo: float) -> Tensor:
    """Eq. 8's inside set, closed at both ends: lo * alpha <= x <= alpha (|W| <= alpha for
    weights; 0 <= x <= alpha for unsigned activations), the same for every level set."""
    ct = compute_dtype(x)
    a = alpha.to(ct)
    if a.dim() == 1:
        a = a.view((-1,) + (1,) * (x.dim() - 1))
    xc = x.to(ct)
    return (xc <= a) & (xc >= a * lo)
