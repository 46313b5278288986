"""nuLSQ: Learning Non-Uniform Step Sizes for Neural Network Quantization.

One learned step size per quantization level (nuLSQ paper and its supplement, Sec. B).
Forward (supplement Eq. 5)::

    Q(x) = sum_n s_n sigma(x - c_n + s_n/2) - sum_n s'_n sigma(-x - c'_n + s'_n/2)

with c_k = s_1 + ... + s_k (c'_k likewise), i.e. x is rounded to the nearest of the levels
-c'_Qn < ... < -c'_1 < 0 < c_1 < ... < c_Qp and clipped at the outer ones. Unsigned
(activations): ``steps`` [2^b - 1], no negative side. Signed (weights): ``steps_pos``
[2^(b-1) - 1] and ``steps_neg`` [2^(b-1)], each ordered from zero outward (2-bit:
{-s'1-s'2, -s'1, 0, s1}). A value exactly on a threshold rounds away from zero on both
sides: Eq. 5 with one convention, sigma(0) = 1, for the positive terms sigma(x - ...) and
the negative terms sigma(-x - ...) alike, so that Q(-x) = -Q(x) wherever the two sides have
the same steps. The searches count thresholds <= x (``torch.bucketize(..., right=True)``)
and get this by moving every negative threshold up by one ulp (``midpoints``): x >= t' iff
x > t. NaN maps to the top level.

Backward (supplement Eq. 10-11; the negative side is their mirror image, derived again
from Eq. 5 because the extracted Eq. 12-13 have an index slip): for x in the step interval
(c_{k-1}, c_k] only s_k gets a gradient, dQ/ds_k = (Q(x) - x) / s_k, which is Eq. 11's
sigma(x - c_k + s_k/2) - (x - c_{k-1})/s_k; above the top level every s_k gets 1, below
the bottom level every s'_k gets -1. dQ/dx = 1 on (-c'_Qn, c_Qp] and 0 outside (half-open
like LSQ in lsq.py). With all steps equal, the sum of the step gradients is LSQ's Eq. 4.

Steps are floored at ``STEP_FLOOR`` in the forward pass (zero gradient while below it).
Performance: the forward pass is one nearest-level search (``torch.bucketize`` off CPU; on
CPU the bin-table search of ``binsearch`` for large float32 inputs, else a branch-free
binary search of ``bits`` vectorised passes; both beat CPU bucketize, whose per-element
branches mispredict) and one gather; only x and a uint8 level index are saved. The
backward pass gathers the levels again and reduces the per-element terms into
per-interval sums with one ``index_add_``; the per-step division and the "every step gets
1 above the top level" term are then applied to the few per-interval sums.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import layout, unrolled
from .base import STEP_FLOOR, Quantizer, register_quantizer
from .binsearch import bin_tables, bucket_gather, table_search_applies
from .initializers import absmax, lsq_step, mse_search
from .lsq import LSQQuantizer, lsq_fake_quant


def level_table(pos: Tensor, neg: Tensor | None) -> Tensor:
    """Sorted levels [-c'_Qn, ..., -c'_1, 0, c_1, ..., c_Qp] from steps ordered from zero
    outward, in at least float32 (the one table forward, backward and ``levels()`` share)."""
    dt = torch.promote_types(pos.dtype, torch.float32)
    parts = [pos.new_zeros(1, dtype=dt), unrolled.prefix_sums(pos.to(dt))]
    if neg is not None:
        parts.insert(0, unrolled.prefix_sums(neg.to(dt)).flip(0).neg())
    return torch.cat(parts)


def midpoints(lv: Tensor) -> Tensor:
    """The thresholds between adjacent levels, negative ones moved up by one ulp so that
    counting thresholds <= x sends a tie away from zero on both sides (module docstring)."""
    thr = (lv[1:] + lv[:-1]) * 0.5
    return torch.where(thr < 0, torch.nextafter(thr, torch.zeros_like(thr)), thr)


def nearest_level(xf: Tensor, lv: Tensor, bits: int, search: bool | None = None) -> tuple[Tensor, Tensor, bool]:
    """Nearest level of a flat contiguous x: (k int32, table, flipped) with ``table[k]``
    the level and ``k ^ (2^bits - 1) if flipped else k`` its index in ``lv``, i.e. the
    number of midpoints ``(lv[i] + lv[i+1]) / 2`` that are <= x (``torch.bucketize(...,
    right=True)``; see ``midpoints`` for ties). ``search``: use the branch-free search
    (default: on CPU)."""
    thr = midpoints(lv)
    if search is None:
        search = xf.device.type == "cpu"
    if not search:
        return torch.bucketize(xf, thr, right=True, out_int32=True), lv, False
    return _search_cpu(xf, thr, bits), lv.flip(0), True


def level_search(xf: Tensor, lv: Tensor, bits: int, search: bool | None = None,
                 negative: int = 0) -> tuple[Tensor, Tensor]:
    """(code, y) for a flat contiguous x: the uint8 index of the nearest level (as
    ``nearest_level``) and that level in x's dtype. Large float32 inputs on CPU use the
    bin-table search (``binsearch``), a constant number of passes at any bit width.
    ``negative``: the number of levels below zero (the unrolled form uses it, see below)."""
    if search is None:
        search = xf.device.type == "cpu"
    if unrolled.unrolled(lv.numel() - 1):  # compiled: comparisons and selects, one fused loop
        # the raw midpoints, the first ``negative`` of which (those below zero) send a tie
        # down by a strict compare: the counts of ``midpoints``' moved thresholds
        k = unrolled.count_le(xf, (lv[1:] + lv[:-1]) * 0.5, strict=negative)
        return k.to(torch.uint8), unrolled.take(lv.to(xf.dtype), k)
    thr = midpoints(lv)
    if search and table_search_applies(xf, thr):
        tables = bin_tables(thr)
        if tables is not None:
            return bucket_gather(xf, thr, lv, tables)
    k, table, flipped = nearest_level(xf, lv, bits, search)
    return level_codes(k, flipped, bits), table.to(xf.dtype).index_select(0, k)


def level_codes(k: Tensor, flipped: bool, bits: int) -> Tensor:
    """uint8 level indices (every index up to 8 bits fits) from ``nearest_level``'s k."""
    code = k.to(torch.uint8)
    return code.bitwise_xor_((1 << bits) - 1) if flipped else code


def _search_cpu(xf: Tensor, thr: Tensor, bits: int) -> Tensor:
    """Branch-free binary search over the 2^bits - 1 sorted thresholds, one vectorised
    level per bit: CPU bucketize takes a mispredicted branch per element and level.

    It tracks q = number of thresholds > x (the complement of the level index), built from
    ``x < t`` so that NaN (never less) lands on the top level, exactly as bucketize does.
    At a level with half-width h the keys are thr[h-1::2h]; a prefix p of the answer
    compares against key p, i.e. against the reversed keys at q (q = 2^depth - 1 - p).
    Every level writes into the same two buffers: fresh multi-MB tensors cost page faults."""
    h = 1 << (bits - 1)
    # 1-element (not 0-d) threshold, so that a bf16/fp16 x is compared in the table dtype
    lt = torch.lt(xf, thr[h - 1 : h])
    q = lt.to(torch.int32)
    e = torch.empty(xf.shape, dtype=thr.dtype, device=xf.device) if h > 1 else None
    while h > 1:
        h >>= 1
        torch.index_select(thr[h - 1 :: 2 * h].flip(0), 0, q, out=e)
        torch.lt(xf, e, out=lt)
        torch.add(lt, q, alpha=2, out=q)
    return q


class _NuLSQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, pos: Tensor, neg: Tensor | None, bits: int, gscale: float) -> Tensor:  # type: ignore[override]
        lv = level_table(pos, neg)
        ctx.bits, ctx.gscale = bits, gscale
        ctx.unrolled = unrolled.unrolled(lv.numel() - 1)  # level_search takes the unrolled form
        # the unrolled form is elementwise: x keeps its shape and memory layout (a flat
        # view of a channels_last x would be a transposing copy)
        xf = x if ctx.unrolled else layout.flat(x)
        ctx.strides = layout.layout(x)  # eager: xf's memory order, kept by y and grad_x
        code, y = level_search(xf, lv, bits, negative=0 if neg is None else neg.numel())
        # only x and the uint8 level index are kept; the backward recomputes the rest
        ctx.save_for_backward(xf, code, pos, neg)
        return y if ctx.unrolled else layout.unflat(y, x.shape, ctx.strides)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        xf, code, pos, neg = ctx.saved_tensors
        if ctx.unrolled:
            return _backward_unrolled(ctx, g, xf, code, pos, neg)
        lv = level_table(pos, neg)
        nlev = lv.numel()
        ct = torch.promote_types(xf.dtype, lv.dtype)
        gf = layout.flat_in(g, ctx.strides)
        j = code.to(torch.int32)
        d = lv.to(ct).index_select(0, j).sub_(xf)  # Q(x) - x
        # interval index j: x in (lv[j-1], lv[j]], 0 below the range, nlev above it. x lies
        # above its level iff d < 0, read off d's sign bit (an arithmetic shift gives 0 or
        # -1): cheaper than a compare and a cast. d is never -0.0 (the zero level is +0.0);
        # a NaN's arbitrary sign bit still picks one of the two neighbouring intervals.
        ibits = torch.int32 if ct == torch.float32 else torch.int64
        j -= torch.bitwise_right_shift(d.view(ibits), torch.iinfo(ibits).bits - 1)
        inside = torch.ones(nlev + 1, dtype=g.dtype, device=g.device)
        inside[0] = inside[nlev] = 0  # dQ/dx per interval
        gx = inside.index_select(0, j).mul_(gf)
        grad_x = layout.unflat(gx, g.shape, ctx.strides) if ctx.needs_input_grad[0] else None
        grad_pos = grad_neg = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # per element: g*(Q-x) inside (divided by the interval's step below), g outside
            w = torch.addcmul(gf, gx, d.sub_(1), out=d)
            sums = torch.zeros(nlev + 1, dtype=ct, device=xf.device).index_add_(0, j, w)
            grad_pos, grad_neg = _step_grads(sums, pos, neg, ctx.gscale)
        return grad_x, grad_pos, grad_neg, None, None


def _step_grads(sums: Tensor, pos: Tensor, neg: Tensor | None, gscale: float) -> tuple[Tensor, Tensor | None]:
    """Step gradients from the per-interval sums (interval 0 below the range, nlev above):
    the interval's sum divided by its step, plus 1 per element above the top level (minus 1
    per element below the bottom one for the negative steps)."""
    nlev = sums.numel() - 1
    nn_ = 0 if neg is None else neg.numel()
    ct = sums.dtype
    grad_pos = ((sums[nn_ + 1 : nlev] / pos.to(ct) + sums[nlev]) * gscale).to(pos.dtype)
    grad_neg = None
    if neg is not None:
        grad_neg = ((sums[1 : nn_ + 1].flip(0) / neg.to(ct) - sums[0]) * gscale).to(neg.dtype)
    return grad_pos, grad_neg


def _backward_unrolled(ctx, g: Tensor, x: Tensor, code: Tensor, pos: Tensor, neg: Tensor | None):
    """The backward pass as one fused loop (under torch.compile): the same per-element terms
    as the eager pass, reduced by one masked sum per interval instead of ``index_add_``.
    x, code and g have x's shape (nothing is flattened, so layouts are kept)."""
    lv = level_table(pos, neg)
    nlev = lv.numel()
    ct = torch.promote_types(x.dtype, lv.dtype)
    j = code.to(torch.int32)
    d = unrolled.take(lv.to(ct), j) - x.to(ct)  # Q(x) - x
    j = j + (d < 0).to(torch.int32)  # interval (lv[j-1], lv[j]]: 0 below the range, nlev above
    inside = (j != 0) & (j != nlev)
    gc = g.to(ct)
    grad_x = torch.where(inside, g, 0) if ctx.needs_input_grad[0] else None
    if not (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        return grad_x, None, None, None, None
    w = torch.where(inside, gc * d, gc)
    if neg is None:  # interval 0 (below the zero level) feeds no gradient: one accumulator less
        sums = torch.cat([w.new_zeros(1), unrolled.interval_sums(j, w, nlev + 1, start=1)])
    else:
        sums = unrolled.interval_sums(j, w, nlev + 1)
    grad_pos, grad_neg = _step_grads(sums, pos, neg, ctx.gscale)
    return grad_x, grad_pos, grad_neg, None, None


@register_quantizer("nulsq")
class NuLSQQuantizer(Quantizer):
    """Non-uniform quantizer with one learned step size per level (per tensor).

    ``init_value``: the step every step gets from ``initialize(x, method="const")``
    (default 1/Qp, so that the unsigned levels span [0, 1])."""

    init_methods = ("lsq", "mse", "const")

    config_fields = ("init_value",)

    def __init__(self, bits: int = 4, signed: bool = False, init_value: float | None = None, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        valid = isinstance(init_value, (int, float)) and not isinstance(init_value, bool) and 0 < init_value < math.inf
        if init_value is not None and not valid:
            raise ValueError(f"init_value={init_value!r}; allowed: a positive finite float or None")
        self.init_value = float(init_value) if init_value is not None else 1.0 / self.qp
        if signed:
            self.steps_pos = nn.Parameter(torch.full((self.qp,), self.init_value))
            self.steps_neg = nn.Parameter(torch.full((self.qn,), self.init_value))
        else:
            self.steps = nn.Parameter(torch.full((self.qp,), self.init_value))

    # --- parameters -----------------------------------------------------------------
    def step_params(self) -> tuple[Tensor, Tensor | None]:
        """(positive steps, negative steps or None), the raw parameters."""
        if self.signed:
            return self.steps_pos, self.steps_neg
        return self.steps, None

    def effective_steps(self) -> tuple[Tensor, Tensor | None]:
        """The steps used in the forward pass, floored so that no level interval closes."""
        pos, neg = self.step_params()
        return pos.clamp_min(STEP_FLOOR), None if neg is None else neg.clamp_min(STEP_FLOOR)

    # --- the interface --------------------------------------------------------------
    def quantize(self, x: Tensor) -> Tensor:
        pos, neg = self.effective_steps()
        return _NuLSQFunction.apply(x, pos, neg, self.bits, self.grad_scale_factor(x))

    def levels(self) -> Tensor:
        pos, neg = self.effective_steps()
        return level_table(pos.detach(), None if neg is None else neg.detach())

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        code = level_search(layout.flat(x), self.levels(), self.bits, negative=self.qn if self.signed else 0)[0]
        return layout.unflat(code, x.shape, layout.layout(x))

    def _initialize(self, x: Tensor, method: str) -> None:
        if method == "lsq":
            s = lsq_step(x, self.qp, False)
        elif method == "mse":
            qn, qp = self.qn, self.qp
            s = mse_search(x, lambda v, sc: lsq_fake_quant(v, sc / qp, qn, qp), absmax(x, False), False) / qp
        else:
            s = torch.tensor(self.init_value)
        for p in self.step_params():
            if p is not None:
                p.data.fill_(s.to(p))  # type: ignore[arg-type]

    @torch.no_grad()
    def inherit(self, other: Quantizer) -> None:
        """Initialise from a trained quantizer (progressive fine-tuning, supplement D-III).

        From a nuLSQ quantizer of the same bits: copy. From one of ``bits + 1``: merge
        adjacent pairs of steps (s1+s2, s3+s4, ...; positive and negative sides apart),
        dropping the outermost step where the count is odd, so that the new levels are a
        subset of the old ones. From a per-tensor LSQ quantizer of ``bits`` or ``bits + 1``:
        every step is its step (doubled when merging)."""
        if not isinstance(other, NuLSQQuantizer) and not (isinstance(other, LSQQuantizer) and other.step.dim() == 0):
            raise ValueError(f"cannot inherit a {type(self).__name__} from a {type(other).__name__} "
                             "(allowed: nulsq, or per-tensor lsq)")
        if other.signed != self.signed:
            raise ValueError(f"cannot inherit signed={self.signed} from a quantizer with signed={other.signed}")
        if other.bits not in (self.bits, self.bits + 1):
            raise ValueError(
                f"nulsq at bits={self.bits} inherits from a quantizer of bits={self.bits} or {self.bits + 1}, "
                f"not bits={other.bits}"
            )
        merge = other.bits == self.bits + 1
        if isinstance(other, NuLSQQuantizer):
            # merge the steps the source really used (floored), so the levels stay a subset
            src = other.effective_steps() if merge else other.step_params()
        else:
            s = other.effective_step()
            src = (s.expand(other.qp), s.expand(other.qn) if other.signed else None)
        for mine, theirs in zip(self.step_params(), src):
            if mine is None or theirs is None:
                continue
            t = theirs.detach().to(mine)
            if merge:
                t = t[: 2 * mine.numel()].reshape(-1, 2).sum(1)
            mine.copy_(t)
        self.mark_initialized()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[override]
        # name the likely cause (another bit width) next to torch's plain size mismatch
        for name, p in self.named_parameters(recurse=False):
            t = state_dict.get(prefix + name)
            if isinstance(t, Tensor) and t.shape != p.shape:
                error_msgs.append(
                    f"{prefix}{name}: the checkpoint has {tuple(t.shape)} steps, this nulsq quantizer "
                    f"(bits={self.bits}, signed={self.signed}) has {tuple(p.shape)}; was it saved at another bit width?"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
