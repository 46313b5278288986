"""Integer layers of the ONNX graph: ``codes -> Conv(codes, integer weights) -> Mul -> Add``.

A layer whose activation and weight tables are both integer grids computes, in eval mode,
``conv(k_a, k_w) * (s_a * s_w) + bias`` (:mod:`nuq.nn.integer_eval`). Its export is the
same arithmetic:

* activation integers ``k_a`` as integer-valued floats: ``Round(Clip(x * (1/s_a)))`` for
  rounding quantizers, a count of threshold comparisons for learned ones (N2UQ), the
  quantizer's dynamic form for the dynamic minmax observer (its step computed in the graph);
* a float ``Conv`` / ``MatMul`` of those integers with the int8/uint8 weight codes (stored
  as int8 behind a ``Cast`` that ONNX Runtime folds at load, see
  :mod:`nuq.export.onnx_graph`). Every partial sum is an integer below 2^24
  (``EXACT_LIMIT``), so float32 accumulation is exact in any order -- the same integers
  ``ConvInteger`` would give, computed by ONNX Runtime's fastest convolution kernels
  (``ConvInteger`` measured ~3x slower than the whole float model);
* one ``Mul`` by ``s_a * s_w`` and the bias ``Add``.

The rescale is written ``Mul(scale, conv)``, which ONNX Runtime's Conv+Mul fusion (it
takes ``Mul(conv, constant)``) leaves alone, so the output is the same float32 bits as
PyTorch's at every optimisation level.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.integer_eval import EXACT_LIMIT
from ..quantizers import Quantizer
from ..quantizers.grid import level_grid


def int_dtype(kmin: int, kmax: int) -> torch.dtype | None:
    """uint8 or int8 when [kmin, kmax] fits one of them (zero point 0), else None."""
    if 0 <= kmin and kmax <= 255:
        return torch.uint8
    if -128 <= kmin and kmax <= 127:
        return torch.int8
    return None


class DQWeight(torch.autograd.Function):
    """Integer weight codes times their scale (PyTorch), as ``DequantizeLinear`` (ONNX; per
    tensor, or per output channel on axis 0).

    The exporter would constant-fold a plain ``codes.float()`` into a float32 initializer;
    as a DequantizeLinear node the codes stay int8 in the file (at scale 1 for the integer
    layers), and :mod:`nuq.export.onnx_graph` turns the node into a ``Cast`` (times the
    scale) that ONNX Runtime folds at load."""

    @staticmethod
    def forward(ctx, w: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        s = scale.view((-1,) + (1,) * (w.dim() - 1)) if scale.dim() else scale
        return w.to(scale.dtype) * s

    @staticmethod
    def symbolic(g, w, scale):  # pragma: no cover - runs inside the exporter
        shape = scale.type().sizes() or []
        dtype = torch.int8 if w.type().scalarType() == "Char" else torch.uint8
        zp = g.op("Constant", value_t=torch.zeros(shape, dtype=dtype))
        return g.op("DequantizeLinear", w, scale, zp, axis_i=0)


def arithmetic_step(values: Tensor) -> float | None:
    """The step d when ``k * d + values[0]`` (float32 multiply, then add) gives ``values[k]``
    exactly for every k and d > 0, else None."""
    if values.numel() < 2 or values.dtype != torch.float32:
        return None
    d = values[1] - values[0]
    k = torch.arange(values.numel(), dtype=values.dtype)
    if not d > 0 or not torch.equal(k * d + values[0], values):
        return None
    return float(d)


def select_by_thresholds(x: Tensor, thresholds: Tensor, values: Tensor) -> Tensor:
    """``values[sum_i (x >= thresholds[i])]`` for ascending ``thresholds``.

    Up to 15 thresholds (b <= 4) every op is elementwise over the tensor's own shape and no
    arithmetic rounds:

    * values in arithmetic progression that ``count * step + first`` computes exactly in
      float32 (N2UQ's codes, consecutive integers; the odd integers of signed DoReFa and
      N2UQ inputs, step 2): the count ``sum_i Cast(x >= t_i)`` times the step, plus the
      first -- a count the QLinearConv pass (:mod:`nuq.export.onnx_requant`) recognises;
    * other tables: the largest positive level reached, ``max_i(v[i+1] * Cast(x >= t_i))``
      over the positive levels, plus the most negative one, ``min_j(v[j] * Cast(x < t_j))``
      over the negative levels. Each product is a level or zero, at most one of the two
      parts is non-zero, so a stored level comes out bit for bit.

    A ``Gather`` of the count from the table measured 2.8x slower than such a max in ONNX
    Runtime (2 threads, a 64x16x28x28 tensor, 3 thresholds); broadcasting to
    ``[..., L-1]`` or a chain of ``Where`` measured slower still. Above 15 thresholds:
    bucketize, then gather."""
    n = thresholds.numel()
    v0 = values[0]
    if n > 15:
        return values[(x.unsqueeze(-1) >= thresholds).sum(-1)]
    step = arithmetic_step(values)
    if step is not None:
        count = (x >= thresholds[0]).to(x.dtype)
        for i in range(1, n):
            count = count + (x >= thresholds[i]).to(x.dtype)
        if step != 1:
            count = count * step
        return count + v0 if float(v0) != 0 else count
    # every level positive: the first one is the floor; every level negative: the last one
    # is the ceiling
    pos = [v0] if v0 > 0 else []
    pos += [(x >= thresholds[k - 1]).to(x.dtype) * values[k] for k in range(1, n + 1) if values[k] > 0]
    neg = [(x < thresholds[k]).to(x.dtype) * values[k] for k in range(n) if values[k] < 0]
    neg += [values[-1]] if values[-1] < 0 else []
    parts = [functools.reduce(pick, terms) for terms, pick in ((pos, torch.maximum), (neg, torch.minimum)) if terms]
    return functools.reduce(torch.add, parts)


class IntegerAct(nn.Module):
    """Activation integers and their scale: ``(k_a, s_a)``; ``kind`` "recip" / "div" (a
    rounding quantizer that multiplies by 1/s / divides by s), "lookup" (thresholds that
    are not a rounding formula, e.g. N2UQ's) or "dynamic" (the quantizer's ``dynamic_form`` on the current batch)."""

    def __init__(self, kind: str, ints: Tensor, scale: Tensor | None, thresholds: Tensor | None = None,
                 inv: Tensor | None = None, levels: Tensor | None = None, form: nn.Module | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("ints", ints.float())
        self.register_buffer("scale", scale.float() if scale is not None else torch.ones(()))
        self.register_buffer("thresholds", thresholds if thresholds is not None else torch.zeros(0))
        self.register_buffer("inv", inv if inv is not None else torch.ones(()))
        self.register_buffer("kmin", ints.min().float())
        self.register_buffer("kmax", ints.max().float())
        lv = levels if levels is not None else torch.zeros(2)
        self.register_buffer("lo", lv[0].float().clone())
        self.register_buffer("hi", lv[-1].float().clone())
        self.form = form

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "recip":  # PyTorch's fake-quantize arithmetic: multiply by 1/s
            return torch.round(torch.clamp(x * self.inv, self.kmin, self.kmax)), self.scale
        if self.kind == "div":
            return torch.round(torch.clamp(x, self.lo, self.hi) / self.scale), self.scale
        if self.kind == "lookup":
            return select_by_thresholds(x, self.thresholds, self.ints), self.scale
        # the quantizer's own dynamic computation (e.g. minmax: max|x| / Qp of this batch)
        return self.form(x)


def integer_act(q: Quantizer, table, name: str) -> IntegerAct | None:
    """The integer form of activation quantizer ``q`` (``table``: its ActTable, None for
    the dynamic minmax observer), or None when its levels are not an integer grid."""
    if q.dynamic:
        form = q.dynamic_form()
        if form is None or q.per_channel:
            return None
        ints = torch.arange(-q.qn, q.qp + 1)
        return IntegerAct("dynamic", ints, None, form=form)
    grid = level_grid(q.levels().detach().cpu().float())
    if grid is None or grid[1].dim() != 0 or int_dtype(int(grid[0].min()), int(grid[0].max())) is None:
        return None
    ints, scale = grid
    consecutive = torch.equal(ints, torch.arange(int(ints[0]), int(ints[0]) + ints.numel()))
    if table.grid is not None and consecutive and torch.equal(table.grid[0], scale):
        if table.rounding == "recip":
            inv = table.inv if table.inv is not None else 1.0 / scale
            return IntegerAct("recip", ints, scale, inv=inv.reshape(()).float())
        if table.rounding == "div":
            return IntegerAct("div", ints, scale, levels=table.levels)
    return IntegerAct("lookup", ints, scale, thresholds=table.thresholds.clone())


class IntegerLayer(nn.Module):
    """A quantized layer as integer codes: ``op(k_a, k_w) * (s_a * s_w) + bias``."""

    def __init__(self, layer: nn.Module, act: IntegerAct, w_codes: Tensor, w_scale: Tensor) -> None:
        super().__init__()
        self.act = act
        self.conv: nn.Module | None = None
        if isinstance(layer, nn.Conv2d):
            self.conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                  layer.padding, layer.dilation, layer.groups, bias=False)
            del self.conv.weight
        self.register_buffer("weight_codes", w_codes.clone())  # int8 / uint8
        self.register_buffer("one", torch.ones(()))
        self.register_buffer("weight_scale", w_scale.float())
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        k, s_a = self.act(x)
        # integer-valued float operands: every partial sum is an integer below 2^24, exact in
        # any summation order, so the float kernel gives the integer result
        w = DQWeight.apply(self.weight_codes, self.one)
        acc = F.linear(k, w) if self.conv is None else self.conv._conv_forward(k, w, None)
        s = s_a * self.weight_scale
        shape = [1] * acc.dim()
        shape[1 if self.conv is not None else -1] = -1
        # scale first: ONNX Runtime's Conv+Mul fusion takes Mul(conv, constant) only, and
        # would fold the scale into the weights (another rounding); Mul(constant, conv) is
        # kept -- or, under its NCHWc layout, run as a 1x1 per-channel product, the same bits
        y = (s.view(shape) if s.dim() else s) * acc
        return y if self.bias is None else y + self.bias.view(shape)


def integer_layer(layer: nn.Module, act_table, grid: tuple[Tensor, Tensor] | None, name: str) -> IntegerLayer | None:
    """``layer`` as an :class:`IntegerLayer` when PyTorch's eval mode runs it on integers too
    (same conditions as :func:`nuq.nn.integer_eval.integer_operands`), else None."""
    qa = layer.act_quantizer
    if (grid is None or qa is None or qa.per_channel or not layer.integer_eval
            or layer.weight.dtype != torch.float32):
        return None
    act = integer_act(qa, act_table, name)
    if act is None:
        return None
    w_codes, w_scale = grid
    fan_in = layer.weight[0].numel()
    if fan_in * int(act.ints.abs().max()) * int(w_codes.abs().max()) >= EXACT_LIMIT:
        return None
    return IntegerLayer(layer, act, w_codes, w_scale)
