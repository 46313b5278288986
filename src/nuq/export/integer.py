"""``integer_forward``: one quantized layer computed the way low-bit hardware would.

The reference shows that the exported codes carry everything the layer computes, and how
each family of methods maps onto arithmetic:

* ``"integer"`` -- weight and activation tables are both ``s * k`` for integers k (LSQ,
  minmax, PACT, DoReFa activations, N2UQ's uniform outputs, APoT's ternary 2-bit weights):
  the layer is an integer convolution of the activation integers with the weight integers,
  accumulated in int32 (int64 only if a bound on the sum says int32 could overflow), times
  one float ``s_a * s_w`` (per output channel for per-channel weights), plus the bias.
  APoT (Li et al., 2020, Sec. 2.1) and N2UQ (Liu et al., 2022, Eq. 1) describe exactly
  this: convolution "against the quantization levels first", the full-precision scale
  multiplied once after the accumulation.
* ``"shift_add"`` -- APoT/PoT weights: each weight level is ``alpha * gamma * sum of
  powers of two``, i.e. an integer ``m`` with few set bits over ``2^E``. The product
  ``a * m`` is computed as shifted copies of the activation integer, added: one
  add/subtract pass per bit plane of ``m``, each partial sum shifted left by the bit's
  position (APoT Sec. 2.2, "Computation": shift the multiplicand and add the partial
  products; n additive terms cost n shift-adds per multiplication).
* ``"lookup"`` -- any other (non-uniform) tables, e.g. nuLSQ: every product is looked up
  in the table ``P[ca, cw] = levels_a[ca] * levels_w[cw]`` indexed by the two codes (the
  look-up-table scheme that N2UQ Sec. 1 contrasts with uniform outputs); the lookups are
  summed in float64.

Agreement with the fake-quantized layer (which sums the same products in float32):
``|integer_forward(x) - layer(x)| <= 1e-5 * max|layer(x)|`` in practice; the integer part
is exact, the difference is float32 rounding of the reference's accumulation.
Activations are encoded with the layer's own quantizer (eval mode), and zero padding pads
with a true zero (the integer 0, or an extra zero entry of the lookup table).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..quantizers import Quantizer
from .tables import check_layer, decoded_weight

#: elements of the one-hot activation tensor of the lookup path kept in memory at once
_LOOKUP_CHUNK = 1 << 24


def integer_levels(q: Quantizer) -> tuple[Tensor, Tensor, str] | None:
    """``q.integer_levels()``: (ints, scale, kind) with ``levels() ~= scale * ints``, kind
    ``"dyadic"`` (sums of powers of two: shift-add) or ``"grid"``; None otherwise."""
    return q.integer_levels()


def integer_plan(layer: nn.Module) -> str:
    """Which arithmetic :func:`integer_forward` uses for ``layer``:
    ``"integer"``, ``"shift_add"`` or ``"lookup"``."""
    check_layer(layer)
    if layer.weight_quantizer is None or layer.act_quantizer is None:
        raise ValueError("integer_forward needs a layer with both a weight and an activation quantizer")
    iw, ia = integer_levels(layer.weight_quantizer), integer_levels(layer.act_quantizer)
    if iw is None or ia is None or ia[1].dim() != 0:
        return "lookup"
    return "shift_add" if iw[2] == "dyadic" else "integer"


def _patches(a: Tensor, layer: nn.Module, pad_value: float) -> tuple[Tensor, tuple[int, ...]]:
    """[N, G, K/G, P] patches of a float64 tensor holding integers (exact below 2^53),
    padded the layer's way, and the output spatial shape."""
    if isinstance(layer, nn.Linear):
        flat = a.reshape(-1, a.shape[-1])
        return flat[:, None, :, None], tuple(a.shape[:-1])
    pad = layer._reversed_padding_repeated_twice  # what nn.Conv2d itself uses ('same' included)
    if any(pad):
        a = F.pad(a, pad, value=pad_value) if layer.padding_mode == "zeros" else F.pad(a, pad, mode=layer.padding_mode)
    cols = F.unfold(a, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)
    n, h, w = a.shape[0], a.shape[2], a.shape[3]
    (kh, kw), (dh, dw), (sh, sw) = layer.kernel_size, layer.dilation, layer.stride
    out = ((h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1)
    return cols.view(n, layer.groups, cols.shape[1] // layer.groups, -1), out


def _finish(y: Tensor, layer: nn.Module, spatial: tuple[int, ...], x: Tensor) -> Tensor:
    """[N, G, O/G, P] float64 -> the layer's output layout, plus bias."""
    n = y.shape[0]
    y = y.reshape(n, -1, y.shape[-1])  # [N, O, P]
    if layer.bias is not None:
        y = y + layer.bias.detach().double().view(1, -1, 1)
    if isinstance(layer, nn.Linear):
        return y[..., 0].reshape(*spatial, -1).to(x.dtype)
    return y.view(n, -1, *spatial).to(x.dtype)


def _int_dtype(bound: int) -> torch.dtype:
    if bound < 2**31:
        return torch.int32  # what an int32 accumulator holds without overflow
    if bound < 2**62:
        return torch.int64
    raise ValueError(f"integer accumulation bound {bound} overflows int64")


@torch.no_grad()
def integer_forward(layer: nn.Module, x: Tensor) -> Tensor:
    """Output of the QuantConv2d/QuantLinear ``layer`` on ``x`` computed from integer codes
    (see the module docstring); equals ``layer(x)`` in eval mode up to float32 rounding.
    Runs on the CPU (integer matmuls), on a copy of the layer; the result is on x's device."""
    plan = integer_plan(layer)
    if x.device.type != "cpu" or any(t.device.type != "cpu" for t in layer.state_dict().values()):
        return integer_forward(copy.deepcopy(layer).cpu(), x.cpu()).to(x.device)
    wq, aq = layer.weight_quantizer, layer.act_quantizer
    cw, lvw, _ = decoded_weight(layer)
    ca = aq.encode(x.detach()).long()
    w_shape = layer.weight.shape
    groups = getattr(layer, "groups", 1)
    if plan == "lookup":
        return _lookup_forward(layer, x, ca, cw.cpu(), lvw.detach().cpu().double(), aq)
    ia, sa, _ = integer_levels(aq)
    iw, sw, _ = integer_levels(wq)
    a_int = ia[ca]
    w_int = iw[cw.reshape(w_shape[0], -1)]  # one integer table; per-channel tables differ in scale only
    cols, spatial = _patches(a_int.double(), layer, 0.0)  # real zero == integer 0 on an s*k grid
    cols = cols.round().long()
    w_g = w_int.view(groups, w_shape[0] // groups, -1)  # [G, O/G, K/G]
    k = w_g.shape[-1]
    amax = int(a_int.abs().max()) if a_int.numel() else 0
    if plan == "integer":
        dt = _int_dtype(amax * int(w_g.abs().max()) * k)
        acc = torch.matmul(w_g.to(dt), cols.to(dt))  # [N, G, O/G, P]
    else:
        # shift-and-add: for each bit j of |m|, add/subtract the activations whose weight
        # has that bit (a {-1, 0, 1} plane), then shift the partial sum left by j
        mag, sign = w_g.abs(), w_g.sign()
        nbits = int(mag.max()).bit_length()
        dt = _int_dtype(amax * k * (2**nbits))
        acc = torch.zeros((cols.shape[0], groups, w_g.shape[1], cols.shape[-1]), dtype=dt)
        cols = cols.to(dt)
        for j in range(nbits):
            plane = ((mag >> j) & 1) * sign
            if bool(plane.any()):
                acc += torch.bitwise_left_shift(torch.matmul(plane.to(dt), cols), j)
    scale = sa * (sw.view(groups, -1, 1) if sw.dim() == 1 else sw)
    return _finish(acc.double() * scale, layer, spatial, x)


def _lookup_forward(layer: nn.Module, x: Tensor, ca: Tensor, cw: Tensor, lvw: Tensor, aq: Quantizer) -> Tensor:
    lva = aq.levels().detach().cpu().double()
    if lva.dim() != 1:
        raise ValueError("integer_forward: per-channel activation quantizers are not supported")
    la = lva.numel()
    # an extra code `la` stands for the zero that zero padding inserts (0 need not be a level)
    lva = torch.cat([lva, lva.new_zeros(1)])
    w_shape = layer.weight.shape
    groups = getattr(layer, "groups", 1)
    cw = cw.reshape(w_shape[0], -1)
    rows = lvw if lvw.dim() == 2 else lvw.expand(w_shape[0], -1)  # [O, Lw]
    # product table P[o, ca, cw] = levels_a[ca] * levels_w[o, cw], looked up at the weight
    # codes for every activation code: T[o, k, ca] = P[o, ca, cw[o, k]]
    table = lva.view(1, -1, 1) * rows.unsqueeze(1)  # [O, La+1, Lw]
    t = torch.gather(table, 2, cw.unsqueeze(1).expand(-1, la + 1, -1)).transpose(1, 2)  # [O, K, La+1]
    t = t.reshape(groups, w_shape[0] // groups, -1, la + 1)  # [G, O/G, K/G, La+1]
    cols, spatial = _patches(ca.double(), layer, float(la))
    cols = cols.round().long()  # [N, G, K/G, P]
    n, _, kg, p = cols.shape
    step = max(1, _LOOKUP_CHUNK // max(1, groups * kg * p * (la + 1)))
    outs = []
    for i in range(0, n, step):
        onehot = F.one_hot(cols[i:i + step], la + 1).double()  # [n, G, K/G, P, La+1]
        outs.append(torch.einsum("ngkpl,gokl->ngop", onehot, t))
    y = torch.cat(outs) if outs else torch.zeros(0, groups, w_shape[0] // groups, p, dtype=torch.float64)
    return _finish(y, layer, spatial, x)


__all__ = ["integer_forward", "integer_levels", "integer_plan"]
