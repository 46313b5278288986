"""The Reparameterized Clipping Function family of APoT (Li, Dong & Wang, ICLR 2020): the
shared machinery of four quantizers, each in its own file (``apot.py``, ``pot.py``,
``uniform.py``, ``lloyd.py``). They share one learned clipping threshold ``alpha`` and
differ only in their normalised level set Q(1, b) (``levelsets.py``):

* ``apot``    -- additive powers of two, Eq. 5 (even b) and Eq. 6 (odd b), k = 2;
* ``pot``     -- powers of two, Eq. 3;
* ``uniform`` -- evenly spaced levels, Eq. 2;
* ``lloyd``   -- a Lloyd-Max level set fitted to the initialisation sample (Table 3 ablation).

Signed quantizers (weights) use a sign bit and the (b-1)-bit unsigned set mirrored
(2^b - 1 levels, 2-bit = ternary {-alpha, 0, alpha}, Sec. 4.1); unsigned quantizers
(post-ReLU activations) use the b-bit set. The largest level is alpha.

Forward, RCF (Eq. 7)::

    Q(x) = alpha * Pi(clip(x / alpha, lo, 1)),   lo = -1 (signed) or 0 (unsigned)

with Pi the projection onto the nearest level of Q(1, b). Backward (Eq. 8, derived in
Appendix A.2; STE for Pi)::

    dQ/dalpha = Pi(x/alpha) - x/alpha  inside (lo <= x/alpha <= 1),  sign(x) above/below
                (0 below for unsigned: clip(x/alpha, 0, 1) = 0 does not depend on alpha)
    dQ/dx     = 1 for weights (Sec. 2.5: dW^/dW~ = 1, outliers included);
                1 inside, 0 outside for activations

The inside set is closed at both ends for every level set, as Eq. 8 writes it (|W| <= alpha):
x = alpha, x = -alpha (signed) and x = 0 (unsigned) are inside. At those points the two
branches of Eq. 8 give the same alpha gradient except at +-alpha, where inside gives
Pi(1) - 1 = 0 and the clipped branch would give sign(x).

summed over the elements that share alpha (times 1/sqrt(N*Qp) with ``grad_scale="lsq"``).

``clip="max"`` is Table 3's "without RCF" column: no clipping, alpha = max|x| of the
current tensor (per channel if per_channel), not learned. Meant for weights; on
activations it makes the quantizer depend on the batch (``dynamic``).

Implementation: no distance matrix and no binary search on the hot path. Every element is
mapped to an integer *cell* with two or three elementwise ops, and a small per-cell table
(built once, exactly, in float64) gives its level (the backward compares x with alpha for
the inside set):

* ``uniform``/``apot``: the raw levels are dyadic rationals, so every threshold (midpoint)
  and both range ends fall on a uniform grid in x/alpha; cell = floor((1 - x/alpha) * K + 1)
  clamped (one ``addcmul``, a clamp and a float->int cast). Cells are half-open (a, b] in
  x/alpha: ties go to the lower level.
* ``pot``: the thresholds of a power-of-two set are 1.5 * 2^e, 2^e at the ends, so the cell is
  the float's sign, exponent and top mantissa bit (a shift of its bit pattern). Ties round
  away from zero.
* ``lloyd`` (arbitrary levels): ``binsearch.count_le`` (bucketize, right=False) on [lo, midpoints, 1].

The backward pass gathers the level table at the saved cell (int16 when it fits) and
needs no recomputation of x/alpha: sum(g * Pi) - sum(g * x * inside) / alpha.

Initialisation (``initialize(x, method)``): ``mse`` (threshold minimising the quantization
MSE, ``init.mse_search``), ``lsq`` (the range of an LSQ quantizer at the same bit width,
2<|x|>sqrt(Qp), capped at max|x|), ``const`` (Appendix C.2: 3.0 for weights, which assumes
APoT weight normalisation, and 8.0 for activations; the paper uses them for its 5-bit models
and initialises lower bit widths progressively, see ``Quantizer.inherit``).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import unrolled
from .base import STEP_FLOOR, Quantizer, compute_dtype
from .binsearch import count_le
from .initializers import absmax, mse_search
from .levelsets import signed_levels
from .rcf_autograd import _RCFFunction, _RCFUnrolledFunction

#: Most cells of the linear lookup table; larger grids fall back to ``bucketize``.
LINEAR_LIMIT = 1 << 20
#: (exponent bits, mantissa bits) of the float formats the power-of-two path reads.
_FLOAT_BITS = {torch.float32: (8, 23), torch.float64: (11, 52)}
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


def _dyadic_exponent(raw: Tensor) -> int:
    """Smallest E with raw * 2^E all integers (raw: exact dyadic rationals)."""
    for e in range(64):
        s = raw * 2.0**e
        if torch.equal(s, s.round()):
            return e
    raise ValueError("level set is not dyadic")


CLIPS = ("learned", "max")


class RCFQuantizer(Quantizer):
    # APoT Sec. 3.3: RCF without weight normalization diverges, so WN is the default
    default_weight_transform = "apot_wn"

    """Quantizer with a learned clipping threshold ``alpha`` and a fixed normalised level set
    (Eq. 7/8). Subclasses give the raw unsigned level set and the projection kind."""

    supports_per_channel = True
    init_methods: ClassVar[tuple[str, ...]] = ("mse", "lsq", "const")
    #: "linear" (dyadic sets), "bits" (powers of two) or "search" (arbitrary levels)
    projection: ClassVar[str] = "linear"
    #: Appendix C.2 initial thresholds (weights after normalisation, activations)
    const_alpha: ClassVar[tuple[float, float]] = (3.0, 8.0)

    config_fields: ClassVar[tuple[str, ...]] = ("clip",)
    #: whether the level set is sums of powers of two (``integer_levels`` kind "dyadic")
    dyadic_levels: ClassVar[bool] = False

    def __init__(self, bits: int = 4, signed: bool = False, clip: str = "learned", **kwargs) -> None:
        if clip not in CLIPS:
            raise ValueError(f"clip={clip!r}; allowed: {', '.join(CLIPS)}")
        super().__init__(bits=bits, signed=signed, **kwargs)
        self.clip = clip
        # clip="max": alpha follows max|x| and is not a trained parameter
        self.alpha = nn.Parameter(torch.ones(self.param_shape()), requires_grad=clip == "learned")
        self._lo = -1.0 if signed else 0.0
        raw = self.raw_levels()
        self.register_buffer("table", raw / raw.max(), persistent=self.table_persistent)
        self._build_lut(raw)

    # --- level set ----------------------------------------------------------------
    table_persistent: ClassVar[bool] = False

    def unsigned_raw(self, bits: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw_levels(self) -> Tensor:
        """Exact (unnormalised) level set: the (b-1)-bit set mirrored, or the b-bit set."""
        if self.signed:
            return signed_levels(self.unsigned_raw(self.bits - 1))
        return self.unsigned_raw(self.bits)

    def _build_lut(self, raw: Tensor) -> None:
        """Per-cell level index (an int32 buffer, exact in float64)."""
        table = raw / raw.max()
        mids = (table[1:] + table[:-1]) / 2
        lo, hi, n = self._lo, 1.0, table.numel()
        kind = self.projection
        if kind == "linear":
            e = _dyadic_exponent(raw)
            k = float(2 ** (e + 1) * raw.max())  # cells per unit of x/alpha; an integer
            self._k = k
            self._zmax = 1.0 + (hi - lo) * k
            if self._zmax + 1 > LINEAR_LIMIT:
                kind = "search"
            else:
                j = torch.arange(int(self._zmax) + 1, dtype=torch.float64)
                rep = hi - (j - 0.5) / k  # centre of cell j in x/alpha
                idx = torch.bucketize(rep, mids)
                idx[0], idx[-1] = n - 1, 0
        if kind == "bits":
            idx_parts = []
            for dt in (torch.float32, torch.float64):
                ebits, _ = _FLOAT_BITS[dt]
                key = torch.arange(2 ** (ebits + 2))
                sign = torch.where(key >> (ebits + 1) == 1, -1.0, 1.0).to(torch.float64)
                ex = (key >> 1) & (2**ebits - 1)
                m = (key & 1).to(torch.float64)
                bias = 2 ** (ebits - 1) - 1
                normal = torch.ldexp(1.25 + 0.5 * m, (ex - bias).to(torch.float64))
                sub = torch.ldexp(0.25 + 0.5 * m, torch.full_like(m, 1 - bias))
                rep = torch.where(ex == 0, sub, torch.where(ex == 2**ebits - 1, math.inf, normal)) * sign
                idx_parts.append(torch.bucketize(rep, mids))
            self._f32_cells = idx_parts[0].numel()
            idx = torch.cat(idx_parts)
        if kind == "search":
            idx = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(n), torch.full((1,), n - 1)])
        self._kind = kind
        # compiled passes search x/alpha among [lo, midpoints, 1] (pot keeps its own tie rules)
        self._unroll = kind != "bits" and n + 1 <= unrolled.MAX_UNROLLED
        self._small_key = idx.numel() <= 2**15
        self.register_buffer("_lut_idx", idx.to(torch.int32), persistent=False)

    # --- projection -----------------------------------------------------------------
    def effective_alpha(self) -> Tensor:
        """alpha as used in the forward pass (floored so it never reaches zero)."""
        return self.alpha.clamp_min(STEP_FLOOR)

    @torch.no_grad()
    def _cells(self, x: Tensor, a: Tensor) -> Tensor:
        """Cell index (int32 or int64) of each element; x and a in the compute dtype."""
        if self._kind == "linear":
            # z = 1 + (1 - x/a) * K ; floor(z) is the cell, cells are (a, b] in x/a
            z = torch.addcmul(torch.full_like(a, 1.0 + self._k), x, -self._k / a)
            # NaN would cast to an out-of-range cell; it is put back by keep_nan afterwards
            return z.clamp_(0.0, self._zmax).nan_to_num_(0.0).to(torch.int32)
        v = x / a
        if self._kind == "bits":
            ebits, mbits = _FLOAT_BITS[v.dtype]
            key = (v.view(_INT_VIEW[v.dtype]) >> (mbits - 1)) & (2 ** (ebits + 2) - 1)
            return key if v.dtype == torch.float32 else key + self._f32_cells
        return count_le(v, self._search_bounds(v.dtype), right=False)

    def _search_bounds(self, dtype: torch.dtype) -> Tensor:
        """[lo, midpoints, 1] of the normalised level table: the cells of the "search" kind."""
        t = self.table.to(dtype)
        return torch.cat([t[:1], (t[1:] + t[:-1]) / 2, t[-1:]])

    def _views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ct = compute_dtype(x)
        if ct not in _FLOAT_BITS:
            raise ValueError(f"unsupported dtype {x.dtype} for {self.method!r}")
        a = self.channel_view(self.effective_alpha(), x).to(ct)
        return x.to(ct), a

    @property
    def dynamic(self) -> bool:
        return self.clip == "max"

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        if self.clip == "max":
            src = x.detach().float() if self.signed else x.detach().float().clamp_min(0)
            self.alpha.copy_(absmax(src, self.per_channel).clamp_min(1e-6).to(self.alpha))

    def quantize(self, x: Tensor) -> Tensor:
        self._observe(x)
        xc, a = self._views(x)
        if self._unroll and unrolled.compiling():
            # compiled: the level search of the "search" kind on x/alpha (a uint8 cell, a few
            # comparisons) for every level set: it fuses with the ReLU/BatchNorm before it
            with torch.no_grad():
                cell = unrolled.count_le(xc / a, self._search_bounds(xc.dtype), right=False).to(torch.uint8)
            return _RCFUnrolledFunction.apply(x, self.effective_alpha(), cell, self.table, self.table.numel() - 1,
                                              self.grad_scale_factor(x), self._lo, self.pass_all)
        key = self._cells(xc.detach(), a.detach())
        lut_val = self.table.to(xc.dtype).index_select(0, self._lut_idx)
        return _RCFFunction.apply(x, self.effective_alpha(), key, lut_val, self._lo,
                                  self.grad_scale_factor(x), self._small_key, self.pass_all)

    @property
    def pass_all(self) -> bool:
        """APoT Sec. 2.5: the weights' STE is dW^/dW~ = 1, also for weights outside +-alpha
        (activations: 1 inside, 0 outside, as for PACT's clipping)."""
        return self.role == "weight"

    @torch.no_grad()
    def _fake(self, x: Tensor, a: Tensor) -> Tensor:
        """Plain fake quantization with threshold a (broadcast against x); for initialisation."""
        lut_val = self.table.to(x.dtype).index_select(0, self._lut_idx)
        return lut_val.index_select(0, self._cells(x, a).reshape(-1)).view(x.shape) * a

    def levels(self) -> Tensor:
        a = self.effective_alpha().detach()
        t = self.table.to(a.dtype)
        return a[:, None] * t if a.dim() == 1 else a * t

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        self._observe(x)
        xc, a = self._views(x)
        return self._lut_idx.index_select(0, self._cells(xc, a).reshape(-1)).view(x.shape).to(self.code_dtype)

    def integer_levels(self) -> tuple[Tensor, Tensor, str] | None:
        """For sums of powers of two (``dyadic_levels``: APoT, PoT), the structure of the
        level set itself: ``levels() == scale * m`` with ``m`` the raw set times 2^E, kind
        ``"dyadic"`` (what shift-add arithmetic needs); otherwise the base class's grid."""
        lv = self.levels().detach().cpu().float()
        if self.dyadic_levels and lv.dim() == 1:
            form = self._dyadic_form(lv)
            if form is not None:
                return form
        return super().integer_levels()

    def _dyadic_form(self, lv: Tensor) -> tuple[Tensor, Tensor, str] | None:
        raw = self.raw_levels()
        if raw.numel() != lv.numel():
            return None
        try:
            e = _dyadic_exponent(raw)
        except ValueError:
            return None
        if e >= 48:  # keep m * activation integers int64-safe
            return None
        m = (raw * 2.0**e).round().long()
        lv64 = lv.double()
        scale = lv64.abs().max() / m.abs().max()
        if not torch.allclose(scale * m.double(), lv64, rtol=1e-5, atol=1e-6 * float(lv64.abs().max())):
            return None
        return m, scale, "dyadic"

    @property
    def pot_terms(self) -> int | None:
        """Shift-adds per multiply for FixOPs accounting (None: not a powers-of-two set)."""
        return None

    # --- initialisation -----------------------------------------------------------------
    def _initialize(self, x: Tensor, method: str) -> None:
        if self.clip == "max":
            self._observe(x)
            return
        if method == "const":
            a = torch.full(self.param_shape(), self.const_alpha[0 if self.signed else 1])
        else:
            src = x if self.signed else x.clamp_min(0)
            top = absmax(src, self.per_channel).clamp_min(1e-6)
            if method == "lsq":
                flat = src.reshape(src.shape[0], -1) if self.per_channel else src.reshape(1, -1)
                a = torch.minimum(2 * flat.abs().mean(1).reshape(top.shape) * math.sqrt(self.qp), top)
            else:
                a = mse_search(src, self._fake, top, self.per_channel)
        self.alpha.data.copy_(a.clamp_min(1e-6).to(self.alpha))

    @torch.no_grad()
    def inherit(self, other: Quantizer) -> None:
        """Take over ``alpha`` from a trained quantizer of the same method (any bit width);
        the level table belongs to the bit width and is kept."""
        if type(other) is not type(self):
            raise ValueError(f"cannot inherit a {type(self).__name__} from a {type(other).__name__}")
        if other.alpha.shape != self.alpha.shape:
            raise ValueError(f"cannot inherit 'alpha': shape {tuple(self.alpha.shape)} here, "
                             f"{tuple(other.alpha.shape)} in the source")
        self.alpha.copy_(other.alpha)
        self.mark_initialized()
