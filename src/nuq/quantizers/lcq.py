"""LCQ: Learnable Companding Quantization (Yamamoto, CVPR 2021), settings of the nuLSQ
supplement C-III (K = 16 intervals, alpha initialised to 3.0 for weights and 8.0 for
activations, companding parameters to 0 = uniform).

Forward. A clipping threshold ``alpha`` and a compressing function f: [0, 1] -> [0, 1],
piecewise linear on K equal input intervals [k/K, (k+1)/K) whose output lengths are
gamma = softmax(``theta``) (so f is monotone, f(0) = 0, f(1) = 1; theta = 0 gives f = id).
With D_k = gamma_0 + ... + gamma_{k-1}::

    f(u)      = D_k + gamma_k (K u - k)                 u in [k/K, (k+1)/K)
    f^-1(z)   = (j + (z - D_j) / gamma_j) / K           z in [D_j, D_{j+1})
    Q(x)      = alpha * s * f^-1( round(n f(u)) / n ),   u = clip(|x| / alpha, 0, 1)

unsigned (activations): s = 1, |x| -> x (negative inputs clip to 0), n = 2^b - 1;
signed (weights): s = sign(x), n = 2^(b-1) - 1, a symmetric grid with 2^b - 1 levels
(the 2-bit weights are {-alpha, 0, alpha}, as in the supplement's "LCQ type"). The levels
alpha * f^-1(c / n), c = 0..n, are what ``levels()`` returns (mirrored when signed).

Backward: uniform quantization in the companded domain with the STE, d round / dz = 1,
and exact derivatives through f, f^-1 and the clipping (the LCQ formulation). Inside the
clipping range, with k the input interval of u, c the code and j the interval of c/n::

    dQ/dx      = gamma_k / gamma_j                          (slope of f over slope of f^-1)
    dQ/dalpha  = s f^-1(c/n) - (x / alpha) gamma_k / gamma_j   (s * 1 when clipped above)
    dQ/dgamma_i = alpha s / (K gamma_j) * ([i < k] + [i = k] r_u - [i < j] - [i = j] r_z)
    dQ/dtheta  = softmax Jacobian applied to dQ/dgamma

with r_u = K u - k and r_z = (c/n - D_j) / gamma_j the fractions inside the intervals.
Clipped elements give dQ/dx = 0 and dQ/dgamma = 0 (f(1) = 1 for every theta).

One pass each way, no bucketize: the input intervals are uniform, so the interval is
floor(K |x| / alpha). The forward saves one int16 key per element, key = (sign,
interval or clipped, code); the backward gathers dQ/dx from a table over keys and reduces
g and g*x per key with ``index_add_``; everything else is [K x (n+1)]-sized arithmetic.
Both passes are custom operators (``nuq::lcq_quantize``, ``nuq::lcq_backward``), so a
compiled model calls these kernels from inside its graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import layout
from .base import STEP_FLOOR, Quantizer, compute_dtype, register_quantizer
from .initializers import absmax, mse_search
from .lsq import lsq_fake_quant

#: 2^23, and its float32 bit pattern (rounding by addition, see _LCQFunction.forward)
_MAGIC = float(2**23)
_MAGIC_BITS = 0x4B000000

#: floor on gamma_j where it divides (the expanding slope), so an interval squeezed to
#: zero by an extreme theta gives a large but finite gradient instead of inf/NaN
GAMMA_FLOOR = 1e-12


def lcq_code_tables(theta: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(gamma, D, j, rho, level) for the codes c = 0..n: gamma = softmax(theta), D the
    K+1 output breakpoints of f, j the interval of c/n, rho its fraction inside it,
    level = f^-1(c/n) (exactly 0 and 1 at the ends)."""
    k = theta.numel()
    gamma = torch.softmax(theta, 0)
    d = torch.cat([gamma.new_zeros(1), torch.cumsum(gamma, 0)])
    zq = torch.arange(n + 1, dtype=theta.dtype, device=theta.device) / n
    j = torch.bucketize(zq, d[1:k].contiguous(), right=True)
    rho = (zq - d[j]) / gamma[j].clamp_min(GAMMA_FLOOR)
    level = (j + rho) / k
    level = torch.cat([level[:1] * 0, level[1:-1], level.new_ones(1)])
    return gamma, d, j, rho, level


def _lcq_forward(x: Tensor, alpha: Tensor, theta: Tensor, n: int, signed: bool) -> tuple[Tensor, Tensor]:
    """(y, key): the quantized output and each element's key (sign, interval or clipped,
    code) for the backward, int16 when the key space fits."""
    ct = compute_dtype(x)
    k = theta.numel()
    a = alpha.to(ct)
    gamma, d, _, _, level = lcq_code_tables(theta.to(ct), n)
    # n f(u) = A + B t1 on t1 = K u + 1 in [0, K + 1], indexed by kk = floor(t1) = interval + 1
    # (kk = 0: clipped below 0, kk = K + 1: clipped above 1, both with B = 0)
    ks = torch.arange(1, k + 1, dtype=ct, device=x.device)
    zero = gamma.new_zeros(1)
    tab_a = torch.cat([zero, n * (d[:-1] - gamma * ks), zero + n])
    tab_b = torch.cat([zero, n * gamma, zero])
    nb1 = (k + 2) * (n + 1)
    out = (a * level).repeat(k + 2)
    if signed:
        out = torch.cat([out, -out])

    # Two full-size work buffers plus the output: on CPU every fresh large allocation
    # costs page faults, so the chain runs in place and reuses buffers via out=.
    st = layout.layout(x)  # flat in x's memory order: y and key keep its layout (channels_last)
    xf = layout.flat(x.to(ct))
    one = a.new_ones(())
    if signed:
        buf = xf.abs()
        torch.addcmul(one, buf, k / a, out=buf)  # t1 = K u + 1 before clipping
    else:
        buf = torch.addcmul(one, xf, k / a)
    buf.clamp_(0, k + 1).nan_to_num_(nan=0.0)  # NaN -> 0, as the LSQ op does
    kk = buf.to(torch.int32)  # truncation == floor on >= 0
    y = torch.index_select(tab_b, 0, kk)
    buf.mul_(y)
    buf.add_(torch.index_select(tab_a, 0, kk, out=y))  # n f(u)
    # Round to the code c by adding 2^23: a float32 in [2^23, 2^24) has unit spacing, so
    # the add rounds half-to-even like torch.round, and its bit pattern is then
    # MAGIC_BITS + c, an int32 that adds to kk without a casting loop (float64: round).
    key = kk.mul_(n + 1)  # kk * (n + 1) + c
    if buf.dtype == torch.float32:
        key.add_(buf.add_(_MAGIC).view(torch.int32)).sub_(_MAGIC_BITS)
    else:
        key.add_(buf.round_().to(torch.int32))
    if signed:
        key.add_(torch.lt(xf, 0), alpha=nb1)  # negative inputs: the mirrored half
    del buf
    torch.index_select(out, 0, key, out=y)
    return (layout.unflat(y, x.shape, st).to(x.dtype),
            layout.unflat(key, x.shape, st).to(_key_dtype(k, n, signed)))


def _key_dtype(k: int, n: int, signed: bool) -> torch.dtype:
    return torch.int16 if (k + 2) * (n + 1) * (2 if signed else 1) <= 2**15 else torch.int32


def _lcq_backward(g: Tensor, x: Tensor, key: Tensor, alpha: Tensor, theta: Tensor, n: int, signed: bool,
                  gscale: float, need_x: bool, need_params: bool
                  ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dL/dx, dL/dalpha, dL/dtheta) from the saved key (see the module docstring)."""
    ct = compute_dtype(x)
    k = theta.numel()
    a = alpha.to(ct)
    gamma, _, jc, rho, level = lcq_code_tables(theta.to(ct), n)
    iota = 1.0 / (k * gamma[jc].clamp_min(GAMMA_FLOOR))  # [n+1]: slope of f^-1 at code c
    zero_row = gamma.new_zeros(1, n + 1)
    slope = torch.cat([zero_row, (k * gamma)[:, None] * iota[None, :], zero_row])  # [K+2, n+1]
    sides = 2 if signed else 1

    st = layout.layout(x)  # every flat tensor in x's memory order
    keyl = layout.flat_in(key, st).to(torch.int32)
    gf = layout.flat_in(g, st).to(ct)
    table = slope.reshape(-1).repeat(sides)
    buf = None
    if need_params:
        nbins = sides * (k + 2) * (n + 1)
        sum_g = torch.zeros(nbins, dtype=ct, device=x.device).index_add_(0, keyl, gf)
        buf = gf * layout.flat_in(x, st).to(ct)
        sum_gx = torch.zeros(nbins, dtype=ct, device=x.device).index_add_(0, keyl, buf)
    grad_x = None
    if need_x:
        # dQ/dx gathered per key, written into the g*x buffer when it exists (one allocation less)
        grad_x = torch.index_select(table, 0, keyl, out=buf) if buf is not None else table.index_select(0, keyl)
        grad_x = layout.unflat(grad_x.mul_(gf), g.shape, st).to(g.dtype)
    if not need_params:
        return grad_x, None, None

    sum_g = sum_g.view(sides, k + 2, n + 1)
    sign = torch.tensor([1.0, -1.0][:sides], dtype=ct, device=x.device).view(sides, 1, 1)
    gs = (sign * sum_g).sum(0)  # sum of g * s per (interval, code)
    gx = sum_gx.view(sides, k + 2, n + 1).sum(0)  # sum of g * x (= g * s * |x|)

    # dQ/dalpha = s f^-1(c/n) - (x/alpha) dQ/dx
    grad_a = ((gs * level).sum() - (slope * gx).sum() / a) * gscale

    # dQ/dgamma: sums over elements inside the clipping range (rows 1..K)
    gi, xi = gs[1:-1], gx[1:-1]
    ks = torch.arange(k, dtype=ct, device=x.device)[:, None]
    p = a * iota * gi  # sum of g alpha s / (K gamma_j)
    q = iota * (k * xi - a * ks * gi)  # ... times r_u = K u - k
    p_k, q_k, p_c = p.sum(1), q.sum(1), p.sum(0)
    p_j = torch.zeros(k, dtype=ct, device=x.device).index_add_(0, jc, p_c)
    pr_j = torch.zeros(k, dtype=ct, device=x.device).index_add_(0, jc, p_c * rho)

    def later(v: Tensor) -> Tensor:  # sum over indices > i
        return v.flip(0).cumsum(0).flip(0) - v

    d_gamma = later(p_k) + q_k - later(p_j) - pr_j
    grad_t = gamma * (d_gamma - (gamma * d_gamma).sum()) * gscale
    return grad_x, grad_a.to(alpha.dtype), grad_t.to(theta.dtype)


# The passes are custom operators: eager mode calls them directly, and a compiled model
# calls the same kernels from inside its graph (no graph break), compiling everything
# around them. Written as inductor code, the per-key sums would be an atomic scatter
# (index_add_ lowered: the compiled LCQ step measured 1.4x slower than eager) or 36-70
# masked sums in every element's loop (K = 16 intervals times the codes).
@torch.library.custom_op("nuq::lcq_quantize", mutates_args=())
def lcq_quantize(x: Tensor, alpha: Tensor, theta: Tensor, n: int, signed: bool, gscale: float
                 ) -> tuple[Tensor, Tensor]:
    """LCQ forward: (y, key); differentiable in x, alpha and theta."""
    return _lcq_forward(x, alpha, theta, n, signed)


@lcq_quantize.register_fake
def _(x, alpha, theta, n, signed, gscale):
    st = layout.layout(x)  # the strides the kernel gives its outputs
    return (torch.empty_strided(x.shape, st, dtype=x.dtype, device=x.device),
            torch.empty_strided(x.shape, st, dtype=_key_dtype(theta.numel(), n, signed), device=x.device))


@torch.library.custom_op("nuq::lcq_backward", mutates_args=())
def lcq_backward(g: Tensor, x: Tensor, key: Tensor, alpha: Tensor, theta: Tensor, n: int, signed: bool,
                 gscale: float) -> tuple[Tensor, Tensor, Tensor]:
    gx, ga, gt = _lcq_backward(g, x, key, alpha, theta, n, signed, gscale, True, True)
    return gx, ga, gt


@lcq_backward.register_fake
def _(g, x, key, alpha, theta, n, signed, gscale):
    gx = torch.empty_strided(g.shape, layout.layout(x), dtype=g.dtype, device=g.device)
    return gx, torch.empty_like(alpha), torch.empty_like(theta)


def _setup(ctx, inputs, output) -> None:
    x, alpha, theta, n, signed, gscale = inputs
    ctx.set_materialize_grads(False)  # the key's gradient stays None, not a full-size zero fill
    ctx.save_for_backward(x, output[1], alpha, theta)
    ctx.n, ctx.signed, ctx.gscale = n, signed, gscale


def _backward(ctx, g, _g_key):
    x, key, alpha, theta = ctx.saved_tensors
    gx, ga, gt = lcq_backward(g, x, key, alpha, theta, ctx.n, ctx.signed, ctx.gscale)
    return gx, ga, gt, None, None, None


torch.library.register_autograd("nuq::lcq_quantize", _backward, setup_context=_setup)


@register_quantizer("lcq")
class LCQQuantizer(Quantizer):
    """Non-uniform quantizer: uniform grid in the domain of a learned piecewise-linear
    compander with K intervals, plus a learned clipping threshold."""

    # "mse" first: the supplement's constants (alpha 3.0 weights, 8.0 activations, "const") assume
    # normalised weights; on raw conv weights alpha = 3 rounds every weight to zero
    init_methods = ("mse", "lsq", "const")

    config_fields = ("intervals",)

    def __init__(self, bits: int = 4, signed: bool = False, intervals: int = 16, **kwargs) -> None:
        super().__init__(bits=bits, signed=signed, **kwargs)
        if isinstance(intervals, bool) or not isinstance(intervals, int) or not 1 <= intervals <= 1024:
            raise ValueError(f"intervals={intervals!r}; allowed: an int in 1..1024")
        self.intervals = intervals
        self.alpha = nn.Parameter(torch.tensor(self.const_alpha))
        self.theta = nn.Parameter(torch.zeros(intervals))

    @property
    def const_alpha(self) -> float:
        """Initial clipping threshold of the supplement: 3.0 weights, 8.0 activations."""
        return 3.0 if self.signed else 8.0

    @property
    def n(self) -> int:
        """Number of steps of the uniform grid in the companded domain (per side if signed)."""
        return self.qp

    def effective_alpha(self) -> Tensor:
        return self.alpha.clamp_min(STEP_FLOOR)

    def quantize(self, x: Tensor) -> Tensor:
        return lcq_quantize(x, self.effective_alpha(), self.theta, self.n, self.signed,
                            float(self.grad_scale_factor(x)))[0]

    def levels(self) -> Tensor:
        a = self.effective_alpha().detach()
        pos = a * lcq_code_tables(self.theta.detach().to(a.dtype), self.n)[4]
        return torch.cat([-pos[1:].flip(0), pos]) if self.signed else pos

    def _initialize(self, x: Tensor, method: str) -> None:
        self.theta.data.zero_()
        n = self.n
        if method == "const":
            a = torch.tensor(self.const_alpha)
        elif method == "lsq":
            a = 2 * math.sqrt(n) * x.abs().mean()
        else:
            qn = n if self.signed else 0
            a = mse_search(x, lambda v, sc: lsq_fake_quant(v, sc / n, qn, n), absmax(x, False), False)
        self.alpha.data.copy_(a.clamp_min(1e-6).to(self.alpha))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", intervals={self.intervals}"
