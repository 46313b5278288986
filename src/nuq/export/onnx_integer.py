"""Integer layers of the ONNX graph: ``QuantizeLinear -> ConvInteger -> Cast -> Mul -> Add``.

A layer whose activation and weight tables are both integer grids computes, in eval mode,
``conv(k_a, k_w) * (s_a * s_w) + bias`` (:mod:`nuq.nn.integer_eval`). Its export is the
same arithmetic in integer ONNX ops:

* activation integers ``k_a`` as uint8/int8: ``QuantizeLinear(Clip(x * (1/s_a)), 1)`` for
  rounding quantizers (the codes of a Q/DQ pair), ``Gather`` of the integer table at the
  threshold count for learned thresholds (N2UQ), ``Round(Clip(x / step))`` for the dynamic
  minmax observer (its step computed in the graph);
* ``ConvInteger`` / ``MatMulInteger`` with the int8/uint8 weight codes as the initializer,
  int32 accumulation -- exact, as is PyTorch's float32 sum of the same integers below 2^24;
* one ``Mul`` by ``s_a * s_w`` and the bias ``Add``.

No graph optimisation of ONNX Runtime folds anything into an integer convolution, so the
output is the same float32 bits as PyTorch's at every optimisation level.
"""

from __future__ import annotations

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


def _zero_point(dtype: torch.dtype) -> int:
    return 128 if dtype == torch.int8 else 0


class _Codes(torch.autograd.Function):
    """round(clip(x * inv, kmin, kmax)) as float (PyTorch), or those integers as uint8 with
    zero point 128 for a signed range (ONNX QuantizeLinear)."""

    @staticmethod
    def forward(ctx, x: Tensor, inv: Tensor, kmin: Tensor, kmax: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        return torch.round(torch.clamp(x * inv, kmin, kmax))

    @staticmethod
    def symbolic(g, x, inv, kmin, kmax, dtype):  # pragma: no cover - runs inside the exporter
        zp = g.op("Constant", value_t=torch.tensor(_zero_point(dtype), dtype=torch.uint8))
        one = g.op("Constant", value_t=torch.ones(()))
        return g.op("QuantizeLinear", g.op("Clip", g.op("Mul", x, inv), kmin, kmax), one, zp)


class _DivCodes(torch.autograd.Function):
    """round(clip(x, lo, hi) / s) as float (PyTorch), or as uint8 with zero point 128 for a
    signed range (ONNX Clip -> QuantizeLinear(s): QuantizeLinear divides)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        return torch.round(torch.clamp(x, lo, hi) / scale)

    @staticmethod
    def symbolic(g, x, scale, lo, hi, dtype):  # pragma: no cover - runs inside the exporter
        zp = g.op("Constant", value_t=torch.tensor(_zero_point(dtype), dtype=torch.uint8))
        return g.op("QuantizeLinear", g.op("Clip", x, lo, hi), scale, zp)


class _IntegerOp(torch.autograd.Function):
    """conv / linear of integer-valued float operands (PyTorch); ConvInteger / MatMulInteger
    with an int32 result cast to float (ONNX).

    Both operands go to the runtime as uint8 with a zero point (128 for signed integers):
    x86 kernels for uint8 x int8 sum pairs of products in int16 with saturation (255 * 127
    * 2 > 32767), uint8 x uint8 ones do not."""

    @staticmethod
    def forward(ctx, k: Tensor, w: Tensor, w_u8: Tensor, conv: nn.Module | None,  # type: ignore[override]
                a_dtype: torch.dtype, w_zp: int) -> Tensor:
        if conv is None:
            return F.linear(k, w)
        return conv._conv_forward(k, w, None)

    @staticmethod
    def symbolic(g, k, w, w_u8, conv, a_dtype, w_zp):  # pragma: no cover - runs inside the exporter
        a_zp = _zero_point(a_dtype)
        if k.type().scalarType() != "Byte":
            if a_zp:
                k = g.op("Add", k, g.op("Constant", value_t=torch.tensor(float(a_zp))))
            k = g.op("Cast", k, to_i=2)  # UINT8
        azp = g.op("Constant", value_t=torch.tensor(a_zp, dtype=torch.uint8))
        wzp = g.op("Constant", value_t=torch.tensor(w_zp, dtype=torch.uint8))
        if conv is None:
            acc = g.op("MatMulInteger", k, g.op("Transpose", w_u8, perm_i=[1, 0]), azp, wzp)
        else:
            kh, kw = conv.kernel_size
            ph, pw = conv.padding
            acc = g.op("ConvInteger", k, w_u8, azp, wzp, kernel_shape_i=[kh, kw], strides_i=list(conv.stride),
                       pads_i=[ph, pw, ph, pw], dilations_i=list(conv.dilation), group_i=conv.groups)
        return g.op("Cast", acc, to_i=1)  # FLOAT


class IntegerAct(nn.Module):
    """Activation integers and their scale: ``(k_a, s_a)``; ``kind`` "recip" / "div" (a
    rounding quantizer that multiplies by 1/s / divides by s), "lookup" (thresholds that
    are not a rounding formula, e.g. N2UQ's) or "dynamic" (the quantizer's ``dynamic_form`` on the current batch)."""

    def __init__(self, kind: str, ints: Tensor, scale: Tensor | None, thresholds: Tensor | None = None,
                 inv: Tensor | None = None, levels: Tensor | None = None, form: nn.Module | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.dtype = int_dtype(int(ints.min()), int(ints.max()))
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
        if self.kind == "recip":
            return _Codes.apply(x, self.inv, self.kmin, self.kmax, self.dtype), self.scale
        if self.kind == "div":
            return _DivCodes.apply(x, self.scale, self.lo, self.hi, self.dtype), self.scale
        if self.kind == "lookup":
            return self.ints[(x.unsqueeze(-1) >= self.thresholds).sum(-1)], self.scale
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
            return IntegerAct("recip", ints, scale, inv=(1.0 / scale).reshape(()))
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
        self.w_zp = _zero_point(w_codes.dtype)
        self.register_buffer("weight_u8", (w_codes.to(torch.int16) + self.w_zp).to(torch.uint8))
        self.register_buffer("weight_ints", w_codes.float())
        self.register_buffer("weight_scale", w_scale.float())
        bias = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        k, s_a = self.act(x)
        acc = _IntegerOp.apply(k, self.weight_ints, self.weight_u8, self.conv, self.act.dtype, self.w_zp)
        s = s_a * self.weight_scale
        shape = [1] * acc.dim()
        shape[1 if self.conv is not None else -1] = -1
        y = acc * (s.view(shape) if s.dim() else s)
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
