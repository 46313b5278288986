"""Eval-mode integer arithmetic of a quantized layer: ``conv(k_a, k_w) * (s_a * s_w) + bias``.

When both of a layer's level tables are integers times one float32 scale
(:func:`nuq.quantizers.grid.level_grid`: LSQ, minmax, PACT, DoReFa, N2UQ's uniform outputs,
APoT's dyadic tables, ...), ``conv(s_a * k_a, s_w * k_w)`` equals ``s_a * s_w * conv(k_a, k_w)``.
In eval mode the layer computes the right-hand side: the convolution runs on the integer
codes held in float32, then one multiply by ``s_a * s_w`` (per output channel for
per-channel weights), then the bias. APoT (Li et al., 2020, Sec. 2.1) and N2UQ (Liu et
al., 2022, Eq. 1) describe this order of operations for their hardware.

Why in PyTorch too, not only in the exported graph: a float32 sum of integer-valued
products below 2^24 is exact in *any* order, so the layer output no longer depends on how
a backend splits the convolution (threads, oneDNN, cuDNN with TF32, ONNX Runtime's MLAS or
ConvInteger). With float operands each backend rounds differently, and an activation
within ~1e-7 of the next quantizer's threshold lands on a neighbouring level -- one level
off, which a trained 2-bit network propagates to ~0.1-1 on the logits for ~0.1% of the
inputs. With integer operands eval outputs are the same bits in every runtime.

Training keeps the fake-quantized float path (its gradients are the methods' STEs). The
integer path is skipped -- silently, it is an arithmetic choice, not a feature -- when a
table is not an integer grid (nuLSQ, LCQ, Lloyd), for per-channel activation quantizers,
for inputs that are not float32 (autocast, half), and when ``fan_in * max|k_a| * max|k_w|``
reaches 2^24 (the sum would no longer be exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..quantizers.grid import level_grid

#: float32 represents every integer below this exactly
EXACT_LIMIT = 2**24


@dataclass
class IntegerOperands:
    """Integer-valued float32 operands of one eval forward and the scale of their product."""

    act: Tensor  #: activation integers, the input's shape
    weight: Tensor  #: weight integers, the weight's shape
    scale: Tensor  #: s_a * s_w, float32, 0-d or [C_out]


def _grid(levels: Tensor) -> tuple[Tensor, Tensor] | None:
    return level_grid(levels.detach().float())


def _max_abs(ints: Tensor) -> int:
    return int(ints.abs().max())


@torch.no_grad()
def integer_operands(layer: nn.Module, x: Tensor) -> IntegerOperands | None:
    """The operands of ``layer``'s integer eval path for input ``x``, or None when the layer
    must use the float path (see the module docstring for when)."""
    qa, qw = layer.act_quantizer, layer.weight_quantizer
    if layer.training or qa is None or qw is None or qa.per_channel:
        return None
    if x.dtype != torch.float32 or layer.weight.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
        return None
    wside = _weight_side(layer)
    if wside is None:
        return None
    # a static table is checked before touching the (large) input; a dynamic one exists
    # only after encode() has observed this batch
    agrid = None if qa.dynamic else _static_act_grid(qa)
    if agrid is None and not qa.dynamic:
        return None
    fan_in = layer.weight[0].numel()
    codes = qa.encode(x)
    if qa.dynamic:
        agrid = _grid(qa.levels())
        if agrid is None:
            return None
    a_ints, s_a = agrid
    weight, s_w, w_max = wside
    if s_a.dim() != 0 or fan_in * _max_abs(a_ints) * w_max >= EXACT_LIMIT:
        return None
    dev = x.device
    act = a_ints.to(dev, torch.float32).index_select(0, codes.reshape(-1).long()).view(x.shape)
    return IntegerOperands(act, weight, (s_a.to(dev) * s_w.to(dev)).float())


def _key(tensors) -> tuple:
    """Changes whenever one of ``tensors`` does (in place or replaced)."""
    return tuple((t.data_ptr(), t._version, t.device) for t in tensors)


def _state_key(layer: nn.Module) -> tuple:
    mods = [m for m in (layer.weight_transform, layer.weight_quantizer) if m is not None]
    return _key([layer.weight, *(t for m in mods for t in (*m.parameters(), *m.buffers()))])


def _static_act_grid(qa: nn.Module) -> tuple[Tensor, Tensor] | None:
    """level_grid of a static activation table, cached until the quantizer's tensors change
    (no host round trip per batch on a GPU)."""
    key = _key([*qa.parameters(), *qa.buffers()])
    cached = getattr(qa, "_integer_grid_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    grid = _grid(qa.levels())
    qa._integer_grid_cache = (key, grid)
    return grid


def _weight_side(layer: nn.Module) -> tuple[Tensor, Tensor, int] | None:
    """(weight integers as float32, s_w, max |integer|) or None; cached on the layer until
    the weight or its quantizer changes -- eval runs it once, not once per batch (a
    per-channel table is checked row by row)."""
    key = _state_key(layer)
    cached = getattr(layer, "_integer_weight_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    qw = layer.weight_quantizer
    w = layer.float_weight().detach()
    w_codes = qw.encode(w).reshape(-1).long()  # first: a dynamic observer sets its levels here
    wgrid = _grid(qw.levels())
    side = None
    if wgrid is not None:
        w_ints, s_w = wgrid
        side = (w_ints.to(w.device, torch.float32).index_select(0, w_codes).view(w.shape), s_w, _max_abs(w_ints))
    layer._integer_weight_cache = (key, side)
    return side
