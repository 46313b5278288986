"""N2UQ: Nonuniform-to-Uniform Quantization (Liu et al., CVPR 2022), activation quantizer.

Parameters (the quantities of the paper): ``start`` s, ``widths`` a_1..a_m (m = 2^b - 1),
``scale_in`` beta_1, ``scale_out`` beta_2. With x' = beta_1 * x and the cumulative
thresholds d_0 = s, d_i = s + a_1 + ... + a_i (Theorem 1), the forward pass is Eq. 12::

    q(x') = 0              x' <  d_0 + a_1/2
            i              d_{i-1} + a_i/2 <= x' < d_i + a_{i+1}/2
            m              x' >= d_{m-1} + a_m/2
    Q(x)  = beta_2 * (2/m) * q(beta_1 * x)            (levels {0, 2/m, ..., 2} * beta_2)

i.e. the level boundaries are the *midpoints* T_i = d_{i-1} + a_i/2 of the intervals
[d_{i-1}, d_i); Q = round-half-up of the G-STE surrogate E below.

Backward (G-STE, Eq. 8-11 and 13). The surrogate is the expectation of the stochastic
quantizer, E(x') = sum_i clip((x' - d_{i-1}) / a_i, 0, 1), equal to (x' - d_{k-1})/a_k + k - 1
inside interval k (d_{k-1} <= x' < d_k), 0 below d_0 and m above d_m. Differentiating
beta_2 * (2/m) * E(beta_1 * x) for x' in interval k (all terms zero outside [d_0, d_m))::

    dQ/dx       = beta_2 (2/m) beta_1 / a_k                              (Eq. 11, chain rule)
    dQ/da_i     = beta_2 (2/m) * ( -(x' - d_{k-1}) / a_k^2   if i == k    (Eq. 13)
                                   -1 / a_k                  if i <  k    (d_{k-1} moves with a_i)
                                   0                         if i >  k )
    dQ/ds       = -beta_2 (2/m) / a_k                        (every d_i moves with s)
    dQ/dbeta_1  = beta_2 (2/m) x / a_k
    dQ/dbeta_2  = (2/m) q                                    (exact: Q is linear in beta_2)

One pass each way: the search of x among the merged sorted boundaries
[d_0, T_1, d_1, T_2, ..., T_m, d_m] / beta_1 (``binsearch.bucket_gather``: a bin-table
lookup on CPU, ``bucketize`` elsewhere) gives j in 0..2m+1, from which the output level is
j // 2 and the G-STE interval is (j + 1) // 2 (0 = below, m + 1 = above); j is saved as
uint8 (int16 at 8 bits). The backward gathers dQ/dx from a [2m+2] table and reduces g and
g*x per j with ``index_add_``; every parameter gradient is then [m]-sized arithmetic on
those sums (the "-1/a_k for every later interval" term of Eq. 13 is a suffix sum over
intervals).

Conventions (DESIGN.md): a_i is clamped to >= 1e-3 in the forward pass and gets no
gradient while clamped; beta_1, beta_2 are floored at STEP_FLOOR (kept positive so the
quantizer stays monotone and ``levels()`` sorted). Init (Sec. 4.1): s = 0, a_i = 2/m,
beta_1 = beta_2 = 1 (``"const"``); ``"lsq"``/``"mse"`` keep that shape but choose a range r
from the data and set beta_1 = 2/r, beta_2 = r/2, so [0, r] maps onto the uniform grid and
Q(x) ~ x there.

``signed=True``: the paper quantizes post-(R)ReLU activations only. For signed inputs the
output grid is shifted by -1: Q = beta_2 * ((2/m) q - 1), levels {-1, -1 + 2/m, ..., 1} *
beta_2 (zero excluded, like the paper's weight quantizer F_Q), and s is initialised to -1,
so the initial quantizer is exactly F_Q(beta_1 x) on [-1, 1]. All gradients are unchanged
except dQ/dbeta_2 = (2/m) q - 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import layout, unrolled
from .base import STEP_FLOOR, Quantizer, compute_dtype, register_quantizer
from .binsearch import bucket_gather
from .initializers import absmax, mse_search
from .lsq import lsq_fake_quant

#: smallest interval width used in the forward pass (N2UQ Sec. 4.1)
WIDTH_FLOOR = 1e-3


def n2uq_boundaries(start: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
    """(d, merged): d = [d_0..d_m] (Theorem 1) and the sorted merged boundaries
    [d_0, T_1, d_1, ..., T_m, d_m] with T_i = d_{i-1} + a_i/2 (Eq. 12 level boundaries)."""
    d = torch.cat([start.reshape(1), start + unrolled.prefix_sums(widths)])
    mids = d[:-1] + widths / 2
    merged = torch.cat([d[:1], torch.stack([mids, d[1:]], 1).reshape(-1)])
    return d, merged


def n2uq_normalized_levels(m: int, signed: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2/m) * q for q = 0..m, shifted by -1 when signed."""
    lv = torch.arange(m + 1, dtype=dtype, device=device) * (2.0 / m)
    return lv - 1 if signed else lv


def n2uq_levels(m: int, signed: bool, scale_out: Tensor) -> Tensor:
    """beta_2 * the normalised levels, computed as integers times one float32 step (``q``
    times beta_2 * 2/m, resp. ``2q - m`` times beta_2 / m when signed): the same values up to
    rounding, and exactly an integer grid, which integer arithmetic needs."""
    return n2uq_level_at(torch.arange(m + 1, dtype=scale_out.dtype, device=scale_out.device), m, signed, scale_out)


def n2uq_level_at(q: Tensor, m: int, signed: bool, scale_out: Tensor) -> Tensor:
    """Level q (a float tensor of integers 0..m) of ``n2uq_levels``, by the same two float
    operations, so that elementwise and table values agree bit for bit."""
    if signed:
        return (q * 2 - m) * (scale_out * (1.0 / m))
    return q * (scale_out * (2.0 / m))


def n2uq_search(x: Tensor, start: Tensor, widths: Tensor, scale_in: Tensor,
                values: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """(j, values[j]): the merged index j = number of merged boundaries <= beta_1 * x
    (shape of x, the smallest int dtype that holds 0..2m+1) and, given a [2m+2] table,
    its entries gathered at j (else None).

    The boundaries are divided by beta_1 (> 0) instead of multiplying x: the same
    comparisons up to rounding at the boundaries, one elementwise pass and one
    full-size temporary less."""
    ct = compute_dtype(x)
    _, merged = n2uq_boundaries(start.to(ct), widths.to(ct))
    return bucket_gather(x.to(ct), merged / scale_in.to(ct), values)


class _N2UQFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, start: Tensor, widths: Tensor, scale_in: Tensor, scale_out: Tensor,  # type: ignore[override]
                signed: bool, gscale: float) -> Tensor:
        ct = compute_dtype(x)
        m = widths.numel()
        ctx.unrolled = unrolled.unrolled(2 * m + 1)  # n2uq_search takes the unrolled form
        if ctx.unrolled:  # compiled: the level j // 2 by arithmetic, not a select chain
            j, _ = n2uq_search(x, start, widths, scale_in)
            y = n2uq_level_at(torch.bitwise_right_shift(j, 1).to(ct), m, signed, scale_out.to(ct))
        else:  # level of merged index j is j // 2: look it up in the table repeated twice
            lv2 = n2uq_levels(m, signed, scale_out.to(ct)).repeat_interleave(2)
            j, y = n2uq_search(x, start, widths, scale_in, lv2)
        y = y.to(x.dtype)
        ctx.save_for_backward(x, j, start, widths, scale_in, scale_out)
        ctx.signed, ctx.gscale = signed, gscale
        return y

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, j, start, widths, scale_in, scale_out = ctx.saved_tensors
        if ctx.unrolled:
            return _backward_unrolled(ctx, g, x, j, start, widths, scale_in, scale_out)
        ct = compute_dtype(x)
        m = widths.numel()
        a, s, b1, b2 = widths.to(ct), start.to(ct), scale_in.to(ct), scale_out.to(ct)
        d, _ = n2uq_boundaries(s, a)
        common = b2 * (2.0 / m)
        st = layout.layout(x)  # every flat tensor in x's memory order (channels_last kept)
        jl = layout.flat_in(j, st).to(torch.int32)
        gf = layout.flat_in(g, st).to(ct)
        zero = torch.zeros(1, dtype=ct, device=x.device)
        # dQ/dx per merged index: 0 below d_0 (j = 0) and above d_m (j = 2m+1)
        slope = torch.cat([zero, (common * b1 / a).repeat_interleave(2), zero])

        need_params = any(ctx.needs_input_grad[1:5])
        lvn = n2uq_normalized_levels(m, ctx.signed, ct, x.device).repeat_interleave(2)
        buf = None
        if need_params:
            # per merged-index sums of g and g*x (index_add_ beats bincount on CPU and GPU)
            nb = 2 * m + 2
            s0j = torch.zeros(nb, dtype=ct, device=x.device).index_add_(0, jl, gf)
            buf = gf * layout.flat_in(x, st).to(ct)
            gxj = torch.zeros(nb, dtype=ct, device=x.device).index_add_(0, jl, buf)
        grad_x = None
        if ctx.needs_input_grad[0]:
            # written into the g*x buffer when it exists: one full-size allocation less
            grad_x = torch.index_select(slope, 0, jl, out=buf) if buf is not None else slope.index_select(0, jl)
            grad_x = layout.unflat(grad_x.mul_(gf), g.shape, st).to(g.dtype)
        if not need_params:
            return grad_x, None, None, None, None, None, None

        s0 = s0j[1:-1].view(m, 2).sum(1)  # sum of g over G-STE interval k = 1..m
        gx = gxj[1:-1].view(m, 2).sum(1)  # sum of g*x over interval k
        g_b2 = (s0j * lvn).sum()
        return (grad_x, *_param_grads(ctx, s0, gx, g_b2, a, d, b1, common, start, widths, scale_in, scale_out))


def _backward_unrolled(ctx, g: Tensor, x: Tensor, j: Tensor, start: Tensor, widths: Tensor,
                       scale_in: Tensor, scale_out: Tensor) -> tuple:
    """The backward pass as one fused loop (under torch.compile), with the eager pass's
    per-element terms. Everything is indexed by the G-STE interval k = (j + 1) // 2 (0
    below d_0, m + 1 above d_m, where every gradient but beta_2's is zero), so the loop
    compares k with 1..m once and reuses the masks for dQ/dx and the 2m interval sums;
    beta_2's term (2/m) q (- 1) is computed from q = j // 2."""
    ct = compute_dtype(x)
    m = widths.numel()
    a, s, b1, b2 = widths.to(ct), start.to(ct), scale_in.to(ct), scale_out.to(ct)
    common = b2 * (2.0 / m)
    jl = j.to(torch.int32)  # elementwise throughout, in x's shape and memory layout
    gf = g.to(ct)
    k = torch.bitwise_right_shift(jl + 1, 1)
    grad_x = None
    if ctx.needs_input_grad[0]:
        zero = gf.new_zeros(1)
        slope = torch.cat([zero, common * b1 / a, zero])  # dQ/dx per interval k = 0..m+1
        grad_x = (unrolled.take(slope, k) * gf).to(g.dtype)
    if not any(ctx.needs_input_grad[1:5]):
        return grad_x, None, None, None, None, None, None
    gxl = gf * x.to(ct)
    s0 = unrolled.interval_sums(k, gf, m + 1, start=1)  # the compares are shared with inside
    gx = unrolled.interval_sums(k, gxl, m + 1, start=1)
    q = torch.bitwise_right_shift(jl, 1).to(ct)
    g_b2 = (gf * (q * (2.0 / m) - 1 if ctx.signed else q * (2.0 / m))).sum()
    d, _ = n2uq_boundaries(s, a)
    return (grad_x, *_param_grads(ctx, s0, gx, g_b2, a, d, b1, common, start, widths, scale_in, scale_out))


def _param_grads(ctx, s0: Tensor, gx: Tensor, g_b2: Tensor, a: Tensor, d: Tensor, b1: Tensor, common: Tensor,
                 start: Tensor, widths: Tensor, scale_in: Tensor, scale_out: Tensor) -> tuple:
    """Eq. 13 and the scale gradients from the per-interval sums of g (s0) and g*x (gx) and
    the sum of g times the normalised level (g_b2); [m]-sized arithmetic."""
    s1 = b1 * gx - d[:-1] * s0  # sum of g*(x' - d_{k-1}) over interval k
    per = s0 / a  # sum of g/a_k over interval k
    later = unrolled.prefix_sums(per.flip(0)).flip(0) - per  # sum over intervals k > i
    gs = ctx.gscale
    grad_w = (common * (-s1 / (a * a) - later) * gs).to(widths.dtype)
    grad_s = (-common * per.sum() * gs).to(start.dtype)
    grad_b1 = (common * (gx / a).sum() * gs).to(scale_in.dtype)
    grad_b2 = (g_b2 * gs).to(scale_out.dtype)
    return grad_s, grad_w, grad_b1, grad_b2, None, None


@register_quantizer("n2uq")
class N2UQQuantizer(Quantizer):
    """Threshold-learning quantizer with uniform output levels and G-STE gradients."""

    init_methods = ("const", "lsq", "mse")
    uniform_output = True
    #: learned thresholds are N2UQ's activation quantizer; its weights use F_Q (``n2uq_w``)
    roles = ("activation",)

    def __init__(self, bits: int = 2, signed: bool = False, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        m = 2**bits - 1
        self.start = nn.Parameter(torch.tensor(-1.0 if signed else 0.0))
        self.widths = nn.Parameter(torch.full((m,), 2.0 / m))
        self.scale_in = nn.Parameter(torch.tensor(1.0))
        self.scale_out = nn.Parameter(torch.tensor(1.0))

    # --- parameters as used in the forward pass ------------------------------------
    def effective_widths(self) -> Tensor:
        # where (not clamp_min): no gradient while clamped, also exactly at the floor
        return torch.where(self.widths > WIDTH_FLOOR, self.widths, WIDTH_FLOOR)

    def effective_scales(self) -> tuple[Tensor, Tensor]:
        return self.scale_in.clamp_min(STEP_FLOOR), self.scale_out.clamp_min(STEP_FLOOR)

    def thresholds(self) -> Tensor:
        """d_0..d_m on the scaled input x' = beta_1 x (detached)."""
        return n2uq_boundaries(self.start.detach(), self.effective_widths().detach())[0]

    # --- the interface --------------------------------------------------------------
    def quantize(self, x: Tensor) -> Tensor:
        b1, b2 = self.effective_scales()
        return _N2UQFunction.apply(x, self.start, self.effective_widths(), b1, b2, self.signed,
                                   self.grad_scale_factor(x))

    def levels(self) -> Tensor:
        return n2uq_levels(self.widths.numel(), self.signed, self.effective_scales()[1].detach())

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        # the same merged search as the forward pass, so decode(encode(x)) == forward(x)
        j, _ = n2uq_search(x, self.start, self.effective_widths(), self.effective_scales()[0])
        return torch.div(j.to(torch.int32), 2, rounding_mode="floor").to(self.code_dtype)

    def _initialize(self, x: Tensor, method: str) -> None:
        m = self.widths.numel()
        self.widths.data.fill_(2.0 / m)
        self.start.data.fill_(-1.0 if self.signed else 0.0)
        if method == "const":
            self.scale_in.data.fill_(1.0)
            self.scale_out.data.fill_(1.0)
            return
        # r: the input range that maps onto the output grid ([0, r] unsigned, [-r, r] signed)
        if method == "lsq":
            # LSQ step 2<|x|>/sqrt(Qp) times the number of steps of the grid on [0, r] (m) or [-r, r] (m / 2)
            step = 2 * x.abs().mean() / math.sqrt(max(self.qp, 1))
            r = step * (m / 2 if self.signed else m)
        elif self.signed:
            r = mse_search(x, lambda v, sc: _uniform_no_zero(v, sc, m), absmax(x, False), False)
        else:
            r = mse_search(x, lambda v, sc: lsq_fake_quant(v, sc / m, 0, m), absmax(x, False), False)
        r = r.clamp_min(1e-6)
        half = 1.0 if self.signed else 2.0
        self.scale_in.data.copy_(half / r)
        self.scale_out.data.copy_(r / half)

    @torch.no_grad()
    def inherit(self, other: Quantizer) -> None:
        """Initialise from a trained N2UQ quantizer of any bit width (progressive
        fine-tuning). Same bits: copy. Otherwise the new thresholds are the old G-STE
        surrogate inverted at the new, coarser (or finer) uniform output grid: d_new_i =
        E_old^{-1}(i * m_old / m_new), so the range [d_0, d_m] and the output range are kept."""
        if type(other) is not type(self):
            raise ValueError(f"cannot inherit a {type(self).__name__} from a {type(other).__name__}")
        if other.signed != self.signed:
            raise ValueError(f"cannot inherit signed={self.signed} from a quantizer with signed={other.signed}")
        self.start.copy_(other.start)
        self.scale_in.copy_(other.scale_in)
        self.scale_out.copy_(other.scale_out)
        m_new, m_old = self.widths.numel(), other.widths.numel()
        if m_new == m_old:
            self.widths.copy_(other.widths)
        else:
            d_old = other.thresholds().to(self.widths)
            pos = torch.linspace(0, m_old, m_new + 1, dtype=d_old.dtype, device=d_old.device)
            lo = pos.floor().clamp_max(m_old - 1).long()
            d_new = d_old[lo] + (pos - lo) * (d_old[lo + 1] - d_old[lo])
            self.widths.copy_(d_new.diff())
        self.mark_initialized()


def _uniform_no_zero(v: Tensor, r: Tensor, m: int) -> Tensor:
    """r * F_Q(v / r): m + 1 evenly spaced levels on [-r, r] (the N2UQ weight grid)."""
    step = 2 * r / m
    return ((v + r) / step).clamp_(0, m).round_() * step - r
