"""What a runtime needs to reproduce a quantizer, found through the generic interface.

* :func:`decoded_weight` -- a layer's weight codes, level table and the decoded weight,
  checked bit-for-bit against the fake-quantized weight (``decode(encode(w)) == q(w)``).
* :func:`uniform_grid` / :func:`integer_grid` / :func:`level_grid` -- when a level table
  is exactly ``s * k`` in float32 for consecutive (or merely integer) ``k``, the scale and
  the integers: what a Q/DQ pair, a DequantizeLinear weight or an integer accumulator needs.
  Exactness is checked, never assumed from ``uniform_output``.
* :func:`activation_table` -- the level table and the *decision thresholds* of an
  activation quantizer, found by probing the quantizer itself. Midpoints are only right
  for round-to-nearest quantizers; N2UQ, for one, learns its thresholds apart from its
  uniform output levels. For every level ``l_i`` (i >= 1) a bisection over the ordered
  float32 bit patterns finds the smallest float32 ``t_i`` with ``q(t_i) >= l_i``, so
  ``q(x) == levels[sum_i (x >= t_i)]`` holds for *every* float32 ``x`` of a monotone
  elementwise quantizer -- exact, not approximate. The result is then checked on the
  thresholds, their float32 neighbours and a grid, and on data dependence (a quantizer
  whose output depends on the rest of the batch cannot be a fixed table).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..nn.layers import QuantConv2d, QuantLinear
from ..quantizers import Quantizer
from ..quantizers.grid import integer_grid, level_grid, uniform_grid  # noqa: F401 (re-exported)

FMAX = torch.finfo(torch.float32).max


def check_layer(layer: nn.Module, name: str = "layer") -> None:
    """ValueError unless ``layer`` is exactly a QuantConv2d or QuantLinear."""
    if type(layer) not in (QuantConv2d, QuantLinear):
        raise ValueError(f"{name}: unsupported layer type {type(layer).__name__}; export handles "
                         "nuq.nn.QuantConv2d and nuq.nn.QuantLinear")


@torch.no_grad()
def decoded_weight(layer: nn.Module, name: str = "layer") -> tuple[Tensor, Tensor, Tensor]:
    """(codes int64, levels float, decoded weight) of a layer's weight quantizer.

    ``levels`` is [L] or, per channel, [C, L]; the decoded weight is ``levels`` gathered at
    ``codes`` and equals the fake-quantized weight exactly (ValueError otherwise)."""
    q = layer.weight_quantizer
    w = layer.float_weight().detach()
    codes = q.encode(w).long()
    lv = q.levels().detach().to(w.dtype)
    if lv.dim() == 2 and lv.shape[0] == w.shape[0]:
        dec = torch.gather(lv, 1, codes.reshape(w.shape[0], -1)).view(w.shape)
    elif lv.dim() == 1:
        dec = lv[codes]
    else:
        raise ValueError(f"{name}: weight level table of shape {tuple(lv.shape)} is neither [L] nor "
                         f"[C={w.shape[0]}, L]")
    ref = q(w)
    if not torch.equal(dec, ref):
        diff = (dec - ref).abs().max().item()
        raise ValueError(f"{name}: {q.method} weight quantizer breaks decode(encode(w)) == q(w) "
                         f"(max difference {diff:.3g}); its codes cannot be exported exactly")
    return codes, lv, dec


def _key(x: Tensor) -> Tensor:
    """float32 -> int64 key with the same order (so bisection can run on bit patterns)."""
    i = x.float().view(torch.int32).long()
    return torch.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _unkey(k: Tensor) -> Tensor:
    i = torch.where(k >= 0, k, -(2**31) - k)
    return i.to(torch.int32).view(torch.float32)


def _next(x: Tensor, direction: int) -> Tensor:
    return _unkey((_key(x) + direction).clamp(_key(torch.tensor(-FMAX)), _key(torch.tensor(FMAX))))


@dataclass
class ActTable:
    """Level table [L] and thresholds [L-1] (float32) with ``q(x) == levels[sum(x >= thresholds)]``.

    ``grid`` = (scale, kmin, kmax) when the quantizer also equals a rounding formula on
    every float32 x, ``rounding`` saying which: ``"div"`` -- round(clip(x, lo, hi) / s) * s,
    what ONNX QuantizeLinear computes; ``"recip"`` -- round(clip(x * (1/s), kmin, kmax)) * s,
    what PyTorch's fake-quantize kernels compute (they multiply by the float32 reciprocal,
    which differs from dividing for about one input in 10^7, next to the rounding ties), or
    with ``inv`` another multiplier: DoReFa rounds x * (2^b - 1) and scales by the float32
    1/(2^b - 1), whose own reciprocal is not 2^b - 1 exactly."""

    levels: Tensor
    thresholds: Tensor
    grid: tuple[Tensor, int, int] | None
    rounding: str | None = None
    inv: Tensor | None = None  #: the multiplier of "recip" rounding (default 1/s)


def _lookup(x: Tensor, levels: Tensor, thresholds: Tensor) -> Tensor:
    return levels[(x.unsqueeze(-1) >= thresholds).sum(-1)]


def qdq_reference(x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """What Clip -> QuantizeLinear -> DequantizeLinear computes (round half to even)."""
    return torch.round(torch.clamp(x, lo, hi) / scale) * scale


def recip_reference(x: Tensor, inv: Tensor, kmin: int, kmax: int, scale: Tensor) -> Tensor:
    """What PyTorch's fake-quantize kernel computes: round(x * inv) clamped, times scale."""
    return torch.round(torch.clamp(x * inv, kmin, kmax)) * scale


@torch.no_grad()
def activation_table(q: Quantizer, name: str = "act_quantizer") -> ActTable:
    """Probe an activation quantizer (on a copy, in eval mode) for its exact threshold table."""
    qc = copy.deepcopy(q).cpu().float().eval()
    lv = qc.levels().detach().float()
    if lv.dim() != 1:
        raise ValueError(f"{name}: per-channel activation quantizers (levels {tuple(lv.shape)}) cannot be exported")
    if lv.numel() < 2 or not bool((lv[1:] >= lv[:-1]).all()):
        raise ValueError(f"{name}: levels() of the {qc.method} quantizer is not a sorted table of >= 2 levels")

    def f(x: Tensor) -> Tensor:
        return qc(x.float()).float()

    target = lv[1:]
    lo = _key(torch.full_like(target, -FMAX))
    hi = _key(torch.full_like(target, FMAX))
    at_lo = f(_unkey(lo)) >= target
    if not bool((f(_unkey(hi)) >= target).all()):
        raise ValueError(f"{name}: the {qc.method} quantizer never outputs its top levels on float32 inputs")
    # invariant: f(lo) < target <= f(hi); ~33 halvings of the 2^33-wide key range
    while bool((hi - lo > 1).any()):
        mid = torch.div(lo + hi, 2, rounding_mode="floor")
        ge = f(_unkey(mid)) >= target
        hi, lo = torch.where(ge, mid, hi), torch.where(ge, lo, mid)
    thr = torch.where(at_lo, torch.full_like(target, -FMAX), _unkey(hi))

    # check: the table reproduces the quantizer at the thresholds, their neighbours and a grid
    span = float(lv[-1] - lv[0]) or 1.0
    probe = torch.cat([thr, _next(thr, -1), _next(thr, 1), lv, _next(lv, -1), _next(lv, 1),
                       torch.linspace(float(lv[0]) - span, float(lv[-1]) + span, 4099),
                       torch.tensor([0.0, -FMAX, FMAX, -1e30, 1e30])])
    out = f(probe)
    if not torch.equal(out, _lookup(probe, lv, thr)):
        raise ValueError(f"{name}: the {qc.method} quantizer is not a monotone step function onto levels() "
                         "in eval mode; it cannot be exported as a threshold table")
    if not torch.equal(f(torch.cat([probe, probe * 1000 + 1e3]))[: probe.numel()], out):
        raise ValueError(f"{name}: the output of the {qc.method} quantizer depends on the rest of the batch "
                         "(a dynamic observer?); only elementwise quantizers can be exported")
    grid = uniform_grid(lv)
    rounding, inv = None, None
    if grid is not None:
        s, kmin, kmax = grid
        if torch.equal(qdq_reference(probe, s, lv[0], lv[-1]), out):
            rounding = "div"
        else:
            # the reciprocal of the step (PyTorch's fake-quantize), or the integer it rounds to
            # (DoReFa's round(x * (2^b - 1)) with levels k * fl(1 / (2^b - 1)))
            for m in dict.fromkeys([float(1.0 / s), float(torch.round(1.0 / s))]):
                if m > 0 and torch.equal(recip_reference(probe, torch.tensor(m), kmin, kmax, s), out):
                    rounding, inv = "recip", torch.tensor(m)
                    break
            else:
                grid = None  # uniform outputs but thresholds elsewhere than at the midpoints (N2UQ)
    return ActTable(lv, thr, grid, rounding, inv)
