"""Compile-friendly forms of the level search and of the per-interval gradient sums.

In eager mode the quantizers search with ``binsearch`` / ``torch.bucketize`` and reduce
with ``index_add_``, the fastest kernels PyTorch has for that. Under ``torch.compile`` each
of those is an opaque call that ends inductor's fusion (``index_add_`` becomes an atomic
scatter, far slower than a reduction), and so are ``torch.dot`` and PyTorch's fake-quant
kernel. With at most ``MAX_UNROLLED`` boundaries (every table at b <= 4: 15 thresholds, 31
merged N2UQ boundaries) the same numbers are written here as a sum of comparisons and as
one masked sum per interval, which the compiler unrolls into a single loop per pass::

    count_le(x, b) = n - sum_t [x < b_t]          (= bucketize(x, b, right=True), NaN -> n)
    sums_i         = sum_e w_e [j_e == i]           (= zeros(n).index_add_(0, j, w))

Results are identical to the eager forms: the counts are the same integers, and every
output value is gathered from the same table.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: most boundaries searched by unrolled comparisons (larger tables keep the search)
MAX_UNROLLED = 31


def compiling() -> bool:
    """True while torch.compile traces (the quantizers then take the unrolled forms)."""
    return torch.compiler.is_compiling()


def unrolled(num_bounds: int) -> bool:
    """Whether a search among ``num_bounds`` boundaries takes the unrolled form now."""
    return num_bounds <= MAX_UNROLLED and compiling()


def count_le(x: Tensor, bounds: Tensor, right: bool = True, strict: int = 0) -> Tensor:
    """int32 number of ``bounds`` (sorted, 1-D) that are <= x (< x when ``right=False``):
    ``torch.bucketize(x, bounds, right=right, out_int32=True)``, NaN counted above all.
    The first ``strict`` bounds count only below x (a tie goes down), as if each were
    moved up by one ulp: a per-vector scalar ``nextafter`` call would cost more than the
    compare in the fused loop."""
    n = bounds.numel()
    x = x.to(torch.promote_types(x.dtype, bounds.dtype))  # a bf16 x is compared in the table's dtype
    # every term is elementwise in x, so the count keeps x's memory layout (channels_last):
    # a fresh zeros() start would make inductor write it, and read x, in another order
    below = torch.zeros_like(x, dtype=torch.int32)
    for t in range(n):
        below = below + (x < bounds[t] if right and t >= strict else x <= bounds[t]).to(torch.int32)
    return n - below


def interval_sums(j: Tensor, w: Tensor, stop: int, start: int = 0) -> Tensor:
    """[stop - start] sums of ``w`` per value ``start..stop-1`` of the integer index ``j``, in
    w's dtype. Each sum is one more accumulator in the fused loop (a compare, a select and
    a cascade-sum step per element), so callers ask only for the intervals they use."""
    return torch.stack([torch.where(j == i, w, 0).sum() for i in range(start, stop)])


def prefix_sums(t: Tensor) -> Tensor:
    """``torch.cumsum(t, 0)`` of a short 1-D float tensor, bit for bit: the CPU kernel adds
    in the accumulation type (float64 for float32) and rounds each prefix once, and so does
    the unrolled form. Compiled, ``cumsum`` is an opaque library call between the BatchNorm
    that feeds a quantizer and the quantizer's loop; without it the two land in one generated
    kernel (their loops stay apart, and the step time did not change measurably)."""
    if not (compiling() and t.numel() <= MAX_UNROLLED):
        return torch.cumsum(t, 0)
    acc_dtype = torch.float64 if t.dtype in (torch.float32, torch.float64) else torch.float32
    out = [t[0].to(acc_dtype)]
    for i in range(1, t.numel()):
        out.append(out[-1] + t[i].to(acc_dtype))
    return torch.stack(out).to(t.dtype)


def take(table: Tensor, idx: Tensor) -> Tensor:
    """``table[idx]`` for a small 1-D table, as a chain of selects: vectorised in the
    compiled loop, where a gather would turn it into a scalar loop."""
    if table.numel() == 1:
        return table[0].expand(idx.shape)
    out = torch.where(idx == 1, table[1], table[0])  # shaped (and laid out) like idx
    for t in range(2, table.numel()):
        out = torch.where(idx == t, table[t], out)
    return out
