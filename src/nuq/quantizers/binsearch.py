"""Exact search of x among sorted boundaries, fast on CPU: ``count_le(x, bounds)`` equals
``torch.bucketize(x, bounds, right=True, out_int32=True)`` (the number of boundaries <= x,
NaN counted above every boundary) element for element; ``right=False`` (boundaries < x)
likewise.

CPU bucketize runs a branchy binary search per element and costs about as much as a whole
fused LSQ forward+backward. Here the search is a table lookup on a uniform grid of bins:

    v(x) = clamp((x - lo) * scale, 0, B - 1)        u = trunc(v)      (B bins, lo < min b)
    count(x) = base[u] + sum_t [x >= cand_t[u]]

The float ``v`` is within 1e-3 bins of the exact affine map (see ``bin_tables``), which is
strictly increasing, so u(b) < u(x) - 1 implies b < x and u(b) > u(x) + 1 implies b > x: a
one-bin margin absorbs every rounding.
Boundaries in the window u(x) - 1 .. u(x) + 1 are compared explicitly: ``base[u]`` counts
the boundaries left of the window, ``cand_t[u]`` is the t-th boundary inside it (NaN pads
windows with fewer, and ``x >= NaN`` is false). With B = 4096 bins a window holds one
boundary unless two boundaries are closer than 3/4096 of the range; up to
``MAX_CANDIDATES`` are handled, beyond that (and off CPU, and for small inputs, where
bucketize is as fast) ``torch.bucketize`` is used. NaN inputs go to an extra bin whose
count is the number of boundaries, as in bucketize.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import layout, unrolled

#: bins of the lookup grid
NUM_BINS = 4096
#: boundaries per 3-bin window handled by the table (one compare pass each)
MAX_CANDIDATES = 3
#: inputs smaller than this use bucketize (the table costs a few small ops per call)
MIN_NUMEL = 1 << 16


class BinTables(NamedTuple):
    """The lookup grid of ``bin_tables``: bin coordinate (x - lo) * scale = x * scale + shift."""

    lo: Tensor
    scale: Tensor
    shift: Tensor
    fused: bool  # x * scale + shift in one op (no cancellation to fear: |shift| is small)
    base: Tensor  # [nbins + 1] boundaries left of each bin's window
    cands: Tensor  # [K, nbins + 1] the boundaries inside the window, NaN-padded

    def coord(self, v: Tensor) -> Tensor:
        """Float bin coordinate of v, clamped to [0, nbins - 1], NaN -> nbins (one
        allocation, then in place)."""
        nbins = self.base.numel() - 1
        if self.fused:
            t = torch.addcmul(self.shift, v, self.scale)
        else:
            t = torch.sub(v, self.lo).mul_(self.scale)
        return t.clamp_(0, nbins - 1).nan_to_num_(nan=float(nbins))


def table_search_applies(x: Tensor, bounds: Tensor) -> bool:
    """Whether the bin table pays off (large CPU input of the boundaries' dtype) and may be
    built: its construction reads a few values on the host, which a ``torch.compile``
    graph must not do (compiled graphs get bucketize, which the compiler lowers itself)."""
    return (x.device.type == "cpu" and x.dtype == bounds.dtype and x.numel() >= MIN_NUMEL
            and bounds.numel() > 1 and not torch.compiler.is_compiling())


def bin_tables(bounds: Tensor, nbins: int = NUM_BINS) -> BinTables | None:
    """The lookup grid for sorted finite 1-D ``bounds``, or None when a window would hold
    more than ``MAX_CANDIDATES`` boundaries or the range is not finite. The grid spans
    [lo, hi] with one spare bin on each side.

    The coordinate is computed in float, with or without a fused multiply-add; within the
    grid its error is below 1e-3 bins (|x * scale| <= 2 nbins where it is not clamped, and
    the sub-then-multiply form where |shift| would be larger), which the one-bin window
    margin absorbs."""
    n = bounds.numel()
    lo, hi = bounds[0], bounds[-1]
    span = float(hi - lo)
    if not (n > 0 and torch.isfinite(bounds).all() and span < float("inf")):
        return None
    h = max(span, 1e-30) / (nbins - 3)
    scale = torch.tensor(1.0 / h, dtype=bounds.dtype, device=bounds.device)
    lo = (lo - h).to(bounds.dtype)
    shift = -lo * scale
    grid = BinTables(lo, scale, shift, abs(float(shift)) <= nbins, bounds.new_zeros(nbins + 1), bounds[:0])
    ub = grid.coord(bounds).to(torch.int32)
    bins = torch.arange(nbins + 1, dtype=torch.int32, device=bounds.device)
    base = torch.searchsorted(ub, bins - 1, out_int32=True)  # boundaries with u(b) < u - 1
    top = torch.searchsorted(ub, bins + 1, right=True, out_int32=True)  # with u(b) <= u + 1
    base[-1], top[-1] = n, n  # the NaN bin: above everything, nothing to compare
    k = int((top - base).max())
    if k > MAX_CANDIDATES:
        return None
    idx = base[None, :] + torch.arange(max(k, 1), dtype=torch.int32, device=bounds.device)[:, None]
    inside = idx < top[None, :]
    cands = torch.where(inside, bounds[idx.clamp_max(n - 1).long()], torch.full_like(bounds[:1], float("nan")))
    return grid._replace(base=base, cands=cands)


def index_dtype(num_bounds: int) -> torch.dtype:
    """Smallest dtype holding every count 0..num_bounds (the saved per-element index)."""
    return torch.uint8 if num_bounds <= 255 else torch.int16 if num_bounds < 2**15 else torch.int32


def count_le(x: Tensor, bounds: Tensor, right: bool = True) -> Tensor:
    """Number of ``bounds`` (sorted ascending, same dtype as x) that are <= x (< x when
    ``right=False``), int32, the shape of x: ``torch.bucketize(x, bounds, right=right,
    out_int32=True)``."""
    if unrolled.unrolled(bounds.numel()):
        return unrolled.count_le(x, bounds, right)
    tables = bin_tables(bounds) if table_search_applies(x, bounds) else None
    if tables is None:  # straight to int32: no round trip through the small index dtype
        j = torch.bucketize(layout.flat(x), bounds, right=right, out_int32=True)  # in x's memory order
        return layout.unflat(j, x.shape, layout.layout(x))
    return bucket_gather(x, bounds, None, tables, right)[0].to(torch.int32)


def bucket_gather(x: Tensor, bounds: Tensor, values: Tensor | None, tables: BinTables | None = None,
                  right: bool = True) -> tuple[Tensor, Tensor | None]:
    """(j, values[j]) with j = ``count_le(x, bounds)`` in ``index_dtype(len(bounds))`` and
    values[j] (``values``: [len(bounds) + 1], x's dtype) shaped like x; None without values.
    ``tables``: ``bin_tables(bounds)`` when the caller has it (default: built here on CPU).
    ``right=False`` counts the boundaries < x instead (bucketize's ``right``).

    One search and one gather. On CPU it allocates two full-size float/int32 buffers and two
    byte-sized ones (fresh multi-MB allocations cost page faults, so the float buffer of the
    bin coordinate is reused for the candidates and the gathered values)."""
    small = index_dtype(bounds.numel())
    if unrolled.unrolled(bounds.numel()):
        j = unrolled.count_le(x, bounds, right)
        return j.to(small), (unrolled.take(values, j) if values is not None else None)
    if tables is None and table_search_applies(x, bounds):
        tables = bin_tables(bounds)
    if tables is None:
        st = layout.layout(x)  # flat in x's memory order: j and the values keep its layout
        j = torch.bucketize(layout.flat(x), bounds, right=right, out_int32=True)
        vals = layout.unflat(values.index_select(0, j), x.shape, st) if values is not None else None
        return layout.unflat(j.to(small), x.shape, st), vals
    base, cands = tables.base, tables.cands
    xf = layout.flat(x)  # in memory order: j and the values keep x's layout
    v = tables.coord(xf)
    u = v.to(torch.int32)
    j = base.to(small).index_select(0, u)
    hit = torch.empty(xf.shape, dtype=torch.bool, device=x.device) if len(cands) > 1 else None
    for t, cand in enumerate(cands):
        torch.index_select(cand, 0, u, out=v)
        if t == len(cands) - 1:  # u is read for the last time: its bytes hold the comparison
            hit = u.view(torch.bool)[: xf.numel()]
        (torch.ge if right else torch.gt)(xf, v, out=hit)
        # same-dtype add: adding a bool to a wider int takes a slow casting loop
        j.add_(hit.view(torch.uint8) if small == torch.uint8 else hit.to(small))
    st = layout.layout(x)
    if values is None:
        return layout.unflat(j, x.shape, st), None
    u.copy_(j)
    y = torch.index_select(values, 0, u, out=v)  # values share x's dtype, hence v's
    return layout.unflat(j, x.shape, st), layout.unflat(y, x.shape, st)
