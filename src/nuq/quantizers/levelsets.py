"""Quantization level sets of the APoT paper (Li, Dong & Wang, ICLR 2020), as pure functions.

This module registers no quantizer (the quantizers package imports every module, which is
harmless here); ``apot.py`` builds the ``uniform``, ``pot``, ``apot`` and ``lloyd``
quantizers on top of it.

Every function returns the sorted *unsigned* level set of a ``bits``-bit code as a float64
tensor, normalised so that the largest level is 1 (the quantizer multiplies by its clipping
threshold alpha). All three sets contain 0 and have exactly 2^bits distinct levels:

* ``uniform_levels`` -- Eq. 2:  {0, 1/(2^b-1), 2/(2^b-1), ..., 1}.
* ``pot_levels``     -- Eq. 3:  {0, 2^-(2^b-2), ..., 2^-1, 1}.  Eq. 3 as printed gives a
  signed b-bit set 2^(b-1) positive powers (2^b + 1 levels, one more than b bits address);
  we keep 2^b codes per unsigned set, as the authors' code does, so a signed b-bit PoT set
  is {0, +-2^-(2^(b-1)-2), ..., +-1}. The smallest level is tiny: 2^-254 at b=8, below
  float32 range (float32 tables hold it as 0; float64 is exact).
* ``apot_levels``    -- Eq. 5 (b = k*n): gamma * {sum_{i<n} p_i}, p_i in {0, 2^-i, 2^-(i+n),
  ..., 2^-(i+(2^k-2)n)}; Eq. 6 (k = 2, b = 2n+1 odd): n terms p_i in {0, 2^-i, 2^-(i+n),
  2^-(i+2n+1)} plus one two-valued term p~ in {0, 2^-2n}. gamma normalises the maximum to 1.
  Each power of two in these sums sits at a distinct binary position, so all 2^b sums are
  distinct. Eq. 6's "2^-(i+2n)" for p~ is read as 2^-2n: with n=1 this gives the paper's
  3-bit example p0 in {0, 2^-1, 2^-2, 2^-4}, p~ in {0, 2^-3} (up to gamma), and it fills the
  one binary position the p_i leave free. Works for every b in 1..8 (the authors' code
  stops at 6).

``signed_levels`` applies the sign-bit convention of DESIGN.md: a signed b-bit set is the
(b-1)-bit unsigned set mirrored around 0 (2^b - 1 levels; 2-bit signed = ternary {-1,0,1}).

``lloyd_levels`` fits a Lloyd-Max level set to data (the "Lloyd" row of the paper's Table 3).

``normalize=False`` returns the raw sums before division by the maximum (integers for the
uniform set, dyadic rationals for PoT/APoT): exact values that ``apot.py`` uses to build an
exact lookup table for the projection.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from .initializers import subsample

#: Bit widths accepted by the unsigned level-set functions (1 only serves as the magnitude
#: half of a signed 2-bit set).
MIN_BITS, MAX_BITS = 1, 8
KINDS = ("uniform", "pot", "apot")


def _check_bits(bits: int, lo: int = MIN_BITS, hi: int = MAX_BITS) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"bits={bits!r}; use an int in {lo}..{hi}")


def _finish(raw: list[float], normalize: bool) -> Tensor:
    t = torch.tensor(sorted(set(raw)), dtype=torch.float64)
    return t / t.max() if normalize else t


def uniform_levels(bits: int, normalize: bool = True) -> Tensor:
    """Eq. 2 (unsigned half): {i / (2^b - 1)}, i = 0..2^b-1."""
    _check_bits(bits)
    return _finish([float(i) for i in range(2**bits)], normalize)


def pot_levels(bits: int, normalize: bool = True) -> Tensor:
    """Eq. 3 (unsigned half): {0} and 2^-t for t = 0..2^b-2."""
    _check_bits(bits)
    return _finish([0.0] + [2.0**-t for t in range(2**bits - 1)], normalize)


def apot_terms(bits: int, k: int = 2) -> list[list[float]]:
    """The additive terms of Eq. 5 / Eq. 6: one list of allowed values per term (each with 0)."""
    _check_bits(bits)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; the base bit width must be a positive int")
    if bits % k == 0:
        n = bits // k
        return [[0.0] + [2.0 ** -(i + j * n) for j in range(2**k - 1)] for i in range(n)]
    if k == 2:  # Eq. 6: b = 2n + 1
        n = bits // 2
        terms = [[0.0, 2.0**-i, 2.0 ** -(i + n), 2.0 ** -(i + 2 * n + 1)] for i in range(n)]
        return terms + [[0.0, 2.0 ** -(2 * n)]]
    raise ValueError(f"bits={bits} is not a multiple of k={k}; the paper's odd-width rule (Eq. 6) needs k=2")


def apot_levels(bits: int, k: int = 2, normalize: bool = True) -> Tensor:
    """Eq. 5 / Eq. 6: every sum of one value per additive term, scaled so the maximum is 1."""
    sums = [sum(c) for c in itertools.product(*apot_terms(bits, k))]
    return _finish(sums, normalize)


def additive_terms(bits: int, k: int = 2) -> int:
    """Number of powers-of-two terms of a b-bit APoT level (n of Eq. 5, n+1 for Eq. 6)."""
    return len(apot_terms(bits, k))


def signed_levels(unsigned: Tensor) -> Tensor:
    """Mirror an unsigned set containing 0 around 0: [-l_max, ..., -l_1, 0, l_1, ..., l_max]."""
    if unsigned.dim() != 1 or unsigned.numel() == 0 or unsigned[0] != 0:
        raise ValueError("signed_levels needs a sorted 1-D unsigned level set starting at 0")
    return torch.cat([-unsigned[1:].flip(0), unsigned])


def level_set(kind: str, bits: int, signed: bool = False, k: int = 2, normalize: bool = True) -> Tensor:
    """The b-bit set of ``kind``: unsigned b-bit set, or sign bit + mirrored (b-1)-bit set."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; allowed: {', '.join(KINDS)}")
    if signed:
        _check_bits(bits, 2, MAX_BITS)
    fn = {"uniform": uniform_levels, "pot": pot_levels, "apot": lambda b, normalize: apot_levels(b, k, normalize)}
    lv = fn[kind](bits - 1 if signed else bits, normalize=normalize)
    return signed_levels(lv) if signed else lv


@torch.no_grad()
def lloyd_levels(x: Tensor, bits: int, iters: int = 50, include_zero: bool = False) -> Tensor:
    """Lloyd-Max level set (2^bits levels, sorted, float64, in the units of ``x``) fitted to
    the sample ``x``: alternate nearest-level assignment (thresholds at midpoints) and
    moving each level to the mean of its cell. Starts from the sample's quantiles; a level
    whose cell is empty keeps its place. ``include_zero`` pins one level at exactly 0 (for
    ReLU outputs and for the mirrored signed convention); the others stay free.
    Samples larger than 65536 elements are subsampled with a fixed generator.
    """
    _check_bits(bits)
    if x.numel() == 0:
        raise ValueError("x is empty; Lloyd fitting needs a non-empty sample")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf values")
    flat = subsample(x.detach().reshape(-1), per_channel=False)[0].to(torch.float64)
    n = 2**bits
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    lv = torch.quantile(flat, q.to(flat.device))
    if include_zero:
        zi = int(lv.abs().argmin())
        lv[zi] = 0.0
    for _ in range(iters):
        lv, _ = lv.sort()
        mids = (lv[1:] + lv[:-1]) / 2
        cell = torch.bucketize(flat, mids)
        count = torch.bincount(cell, minlength=n).to(torch.float64)
        total = torch.bincount(cell, weights=flat, minlength=n)
        new = torch.where(count > 0, total / count.clamp_min(1), lv)
        if include_zero:
            new[int(lv.abs().argmin())] = 0.0
        if torch.equal(new, lv):
            break
        lv = new
    return lv.sort().values.cpu()
