"""``to_onnx``: the quantized model, eval mode, as an ONNX graph that ONNX Runtime runs.

The prepared model is first turned into an *export-mode* copy (:func:`export_model`):
every QuantConv2d / QuantLinear becomes a convolution / linear op on its decoded weights
behind an activation module. Weights whose level table is exactly integers ``k`` times a
float32 scale ``s`` (LSQ, minmax, PACT-style grids, APoT's sums of powers of two) are
stored as int8/uint8 ``k`` and a ``DequantizeLinear`` (per tensor or per output channel);
other tables (nuLSQ, LCQ, Lloyd) as uint8 codes and their level table behind a ``Gather``
(:func:`~nuq.export.onnx_graph.store_weight_tables`) -- either way the decoded weights,
bit for bit, folded by ONNX Runtime at load, in a byte per weight. BatchNorm is not folded into the weights, so the file
shows the weights' own levels; it is written as ``Mul(a, x) -> Add(b, .)``, the eval
arithmetic of the prepared model's BatchNorms (:mod:`nuq.nn.batchnorm`), not as a
BatchNormalization node, which ONNX Runtime rounds differently.

Layers whose weight *and* activation tables are integer grids -- the ones PyTorch's eval
mode already computes on integers (:mod:`nuq.nn.integer_eval`) -- are written as integer
codes into a float convolution: ``Round(Clip(x / s)) -> Conv(codes, int8 weights) -> Mul ->
Add`` (:mod:`nuq.export.onnx_integer`). Their sums are exact in both runtimes, whatever
the order, so those layers, and with them whole models of such layers (the BatchNorms'
multiply and add are the same IEEE operations in both), give the same bits as PyTorch at
every optimisation level; pooling, whose float sums each runtime orders its own way, can
still move an input of the next quantizer across a threshold. The other layers
(non-uniform tables) keep a float convolution and the activation paths below:

* uniform activation quantizers -- whose table is ``s * k`` for consecutive integers k and
  whose thresholds sit where ``round`` puts them (LSQ, minmax, PACT, ...) -- become
  ``Clip -> QuantizeLinear -> DequantizeLinear`` (uint8 or int8 codes; the Clip holds
  sub-8-bit ranges), the pattern that deployment toolchains map onto integer kernels,
  in layers with integer weights and no bias (see :func:`export_model` for why), and the
  same arithmetic in plain ops (Div/Mul, Clip, Round, Mul) elsewhere.
  PyTorch's fake-quantize kernel (used by LSQ) multiplies by the reciprocal of the step
  where QuantizeLinear divides, so for those the graph is
  ``Mul(1/s) -> Clip -> QuantizeLinear(1) -> DequantizeLinear(s)``: the same integers,
  bit-exact;
* every other activation quantizer (nuLSQ, APoT, N2UQ's learned thresholds, LCQ) becomes
  a threshold search plus a table lookup, ``levels[sum_i (x >= t_i)]``, written as a
  ``Max`` of ``level * Cast(x >= t_i)`` over the positive levels (and a ``Min`` over the
  negative ones; :func:`~nuq.export.onnx_integer.select_by_thresholds`): no arithmetic
  that rounds, and no ``Gather``, which is slow in ONNX Runtime (``bucketize`` has no
  export in every opset). The
  thresholds are found by probing the quantizer (:func:`nuq.export.tables.activation_table`)
  and reproduce it on every float32 input;
* the one data-dependent quantizer, ``minmax`` with a dynamic observer (step = max|x|/Qp
  of the current batch; the default for signed inputs, i.e. the first layer), becomes the
  same arithmetic in the graph: ReduceMax(Abs), Div, Clip, Round, Mul.

N2UQ (Liu et al., 2022, Fig. 1) argues that non-uniform *outputs* need such a look-up step
before integer arithmetic while learned thresholds do not; here both kinds are exported
exactly and the graph shows which path each layer took.

The graph is written with PyTorch's TorchScript-based exporter (``dynamo=False``): it
needs no ``onnxscript`` and it honours the ``symbolic`` of the Q/DQ function below.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.walk import quant_layers, set_module
from ..quantizers import Quantizer
from ..runs.files import atomic_write_bytes
from .onnx_fold import fold_affine
from .onnx_graph import fold_weight_dequantize, store_weight_tables
from .onnx_integer import DQWeight, int_dtype, integer_layer, select_by_thresholds
from .onnx_peephole import clip_after_quantize, divide_into_quantize
from .onnx_requant import fuse_requantize
from .packed import _check_model
from .tables import ActTable, activation_table, decoded_weight, level_grid, qdq_reference, recip_reference

OPSET = 17


def _const(g, t: Tensor):
    return g.op("Constant", value_t=t)


class _QDQ(torch.autograd.Function):
    """round(clip(x, lo, hi) / s) * s as Clip -> QuantizeLinear(s) -> DequantizeLinear(s)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        return qdq_reference(x, scale, lo, hi)

    @staticmethod
    def symbolic(g, x, scale, lo, hi, dtype):  # pragma: no cover - runs inside the exporter
        zp = _const(g, torch.zeros((), dtype=dtype))
        q = g.op("QuantizeLinear", g.op("Clip", x, lo, hi), scale, zp)
        return g.op("DequantizeLinear", q, scale, zp)


class _RecipQDQ(torch.autograd.Function):
    """round(clip(x * inv, kmin, kmax)) * s as Mul -> Clip -> QuantizeLinear(1) -> DequantizeLinear(s):
    PyTorch's fake-quantize arithmetic (multiply by the reciprocal), with the same integer
    tensor between Q and DQ as a plain Q/DQ pair."""

    @staticmethod
    def forward(ctx, x: Tensor, inv: Tensor, kmin: Tensor, kmax: Tensor, scale: Tensor,  # type: ignore[override]
                dtype: torch.dtype) -> Tensor:
        return recip_reference(x, inv, kmin, kmax, scale)

    @staticmethod
    def symbolic(g, x, inv, kmin, kmax, scale, dtype):  # pragma: no cover - runs inside the exporter
        zp = _const(g, torch.zeros((), dtype=dtype))
        one = _const(g, torch.ones(()))
        q = g.op("QuantizeLinear", g.op("Clip", g.op("Mul", x, inv), kmin, kmax), one, zp)
        return g.op("DequantizeLinear", q, scale, zp)


class QDQAct(nn.Module):
    """Uniform activation quantizer of the export graph: a Q/DQ pair (``rounding`` "div"
    for a quantizer that divides by its step, "recip" for one that multiplies by 1/step)."""

    def __init__(self, table: ActTable) -> None:
        super().__init__()
        scale, kmin, kmax = table.grid
        self.dtype = int_dtype(kmin, kmax)
        self.recip = table.rounding == "recip"
        self.register_buffer("scale", scale.reshape(()).clone())
        self.register_buffer("inv", (table.inv if table.inv is not None else 1.0 / self.scale).reshape(()).float())
        self.register_buffer("lo", table.levels[0].clone())
        self.register_buffer("hi", table.levels[-1].clone())
        self.register_buffer("kmin", torch.tensor(float(kmin)))
        self.register_buffer("kmax", torch.tensor(float(kmax)))

    def forward(self, x: Tensor) -> Tensor:
        if self.recip:
            return _RecipQDQ.apply(x, self.inv, self.kmin, self.kmax, self.scale, self.dtype)
        return _QDQ.apply(x, self.scale, self.lo, self.hi, self.dtype)


class RoundAct(QDQAct):
    """The same arithmetic as :class:`QDQAct` in plain float ops (Div or Mul, Clip, Round,
    Mul), for layers whose weights stay float (see ``export_model``)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.recip:
            return recip_reference(x, self.inv, self.kmin, self.kmax, self.scale)
        return qdq_reference(x, self.scale, self.lo, self.hi)


class LookupAct(nn.Module):
    """Non-uniform activation quantizer of the export graph: thresholds + level table."""

    def __init__(self, table: ActTable) -> None:
        super().__init__()
        self.register_buffer("thresholds", table.thresholds.clone())
        self.register_buffer("levels", table.levels.clone())

    def forward(self, x: Tensor) -> Tensor:
        return select_by_thresholds(x, self.thresholds, self.levels)


class DynamicAct(nn.Module):
    """A quantizer whose range is measured on the *current batch* (``q.dynamic``, e.g. the
    dynamic ``minmax`` observer): the quantizer's own ``dynamic_form()`` traced into the
    graph (for minmax: ReduceMax(Abs) -> Div -> Max(floor) -> Div -> Clip -> Round), times
    the measured step."""

    def __init__(self, form: nn.Module) -> None:
        super().__init__()
        self.form = form

    def forward(self, x: Tensor) -> Tensor:
        k, step = self.form(x)
        return k * step


def _dynamic_act(q: Quantizer, name: str) -> nn.Module | None:
    if not q.dynamic:
        return None
    form = q.dynamic_form()
    if form is None:
        raise ValueError(f"{name}: the {q.method!r} quantizer measures its range on every batch but offers no "
                         "dynamic_form(); it cannot be exported")
    if q.per_channel:
        raise ValueError(f"{name}: per-channel dynamic activation quantizers cannot be exported")
    mod = DynamicAct(form)
    qc = copy.deepcopy(q).cpu().float().eval()
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(3, 257, generator=gen) * scale
        if not torch.equal(mod(x), qc(x)):
            raise ValueError(f"{name}: the dynamic export of {q.method!r} does not reproduce the quantizer")
    return mod


class ExportLayer(nn.Module):
    """Activation module (or identity), then the conv/linear with its decoded weight: as
    integer codes + scale (a DequantizeLinear in the graph) when the weight table is a
    uniform grid that fits 8 bits, else as a float constant."""

    def __init__(self, layer: nn.Module, act: nn.Module | None, weight: Tensor,
                 grid: tuple[Tensor, Tensor] | None) -> None:
        super().__init__()
        self.act = act if act is not None else nn.Identity()
        self.conv = isinstance(layer, nn.Conv2d)
        if self.conv:
            self.op: nn.Module = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                           layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                                           layer.padding_mode)
        else:
            self.op = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
        del self.op.weight
        if layer.bias is not None:
            self.op.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        self.int_weight = grid is not None
        if grid is not None:
            self.register_buffer("weight_codes", grid[0])
            self.register_buffer("weight_scale", grid[1])
        else:
            self.register_buffer("weight", weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        w = DQWeight.apply(self.weight_codes, self.weight_scale) if self.int_weight else self.weight
        x = self.act(x)
        if self.conv:
            return self.op._conv_forward(x, w, self.op.bias)
        return F.linear(x, w, self.op.bias)


def _weight_ints(layer: nn.Module, codes: Tensor, lv: Tensor, dec: Tensor) -> tuple[Tensor, Tensor] | None:
    """(integer weight [O, ...] as uint8/int8, scale) reproducing ``dec`` exactly, or None."""
    grid = level_grid(lv.detach().cpu().float())
    if grid is None or dec.dtype != torch.float32:
        return None
    ints, scale = grid
    dtype = int_dtype(int(ints[0]), int(ints[-1]))
    if dtype is None:
        return None
    w = ints[codes.cpu()].to(dtype)
    if not torch.equal(DQWeight.apply(w, scale), dec.cpu()):
        return None
    return w, scale


@torch.no_grad()
def export_model(model: nn.Module, qdq: bool = True) -> tuple[nn.Module, dict[str, dict[str, str]]]:
    """The export-mode copy of a prepared model (eval mode, CPU) and, per quantized layer,
    ``{"weight": "int8" | "uint8" | "float", "act": "qdq" | "round" | "lookup" | "dynamic" | "float"}``.
    Its outputs equal the model's exactly.

    Q/DQ activations go only with integer (DequantizeLinear) weights and no bias: for an
    op fed by a DequantizeLinear, ONNX Runtime's basic graph optimisations quantize float
    weights to int8 with a scale of their own and the bias to int32 at scale s_a * s_w
    (what integer kernels need, but lossy next to the float model: one quantization step
    off for some activations downstream). Those layers get the same activation arithmetic
    in plain float ops ("round") instead, which no optimisation rewrites."""
    _check_model(model)
    was_training = model.training
    model.eval()
    try:
        out = copy.deepcopy(model).cpu().eval()
        paths: dict[str, dict[str, str]] = {}
        for name, layer in list(quant_layers(out)):
            grid = None
            if layer.weight_quantizer is not None:
                codes, lv, weight = decoded_weight(layer, name)
                grid = _weight_ints(layer, codes, lv, weight)
            else:
                weight = layer.float_weight().detach()
            wpath = "float" if grid is None else ("int8" if grid[0].dtype == torch.int8 else "uint8")
            act: nn.Module | None = None
            table = None
            if layer.act_quantizer is not None and not layer.act_quantizer.dynamic:
                table = activation_table(layer.act_quantizer, f"{name}.act_quantizer")
            ilayer = integer_layer(layer, table, grid, name)
            if ilayer is not None:
                # the arithmetic of the layer's own eval mode (nuq.nn.integer_eval)
                set_module(out, name, ilayer)
                paths[name] = {"weight": wpath, "act": f"integer-{ilayer.act.kind}"}
                continue
            if layer.act_quantizer is None:
                apath = "float"
            elif (act := _dynamic_act(layer.act_quantizer, f"{name}.act_quantizer")) is not None:
                apath = "dynamic"
            else:
                if table.grid is not None and int_dtype(table.grid[1], table.grid[2]) is not None:
                    use_qdq = qdq and grid is not None and layer.bias is None
                    act = QDQAct(table) if use_qdq else RoundAct(table)
                    apath = "qdq" if type(act) is QDQAct else "round"
                else:
                    act, apath = LookupAct(table), "lookup"
            set_module(out, name, ExportLayer(layer, act, weight, grid))
            paths[name] = {"weight": wpath, "act": apath}
    finally:
        model.train(was_training)
    return out, paths


def verification_batches(x: Tensor, seed: int = 0) -> list[Tensor]:
    """The example batch and four batches like it: elements shuffled across the batch
    (same value distribution), the batch at half and twice its scale, and Gaussian noise of
    its mean and std."""
    if not x.is_floating_point() or x.numel() == 0:
        return [x]
    g = torch.Generator().manual_seed(seed)
    flat = x.reshape(-1)
    shuffled = flat[torch.randperm(flat.numel(), generator=g)].view_as(x)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype) * x.std() + x.mean()
    return [x, shuffled, x * 0.5, x * 2.0, noise]


def _rewrite(data: bytes, qlinear: bool, exact: bool) -> tuple[bytes, list[str]]:
    """The exported graph after the weight-Cast pass (:mod:`nuq.export.onnx_graph`), with
    ``qlinear`` the QLinearConv pass (:mod:`nuq.export.onnx_requant`) and the exact rewrites
    around its QuantizeLinear nodes (:mod:`nuq.export.onnx_peephole`), without ``exact``
    the folding pass (:mod:`nuq.export.onnx_fold`), and then the pass that stores float
    weights of few values as uint8 codes and a table; plus the names of the convolutions
    the QLinearConv pass rewrote."""
    try:
        import onnx
    except ImportError as e:
        raise ValueError("ONNX export needs the onnx package: pip install 'nuq[onnx]'") from e
    proto = onnx.load_from_string(data)
    changed = fold_weight_dequantize(proto) > 0
    fused = fuse_requantize(proto) if qlinear else []
    peepholes = divide_into_quantize(proto) + clip_after_quantize(proto) if fused else 0
    folded = 0 if exact else fold_affine(proto)
    tables = store_weight_tables(proto)  # last: the passes above read weights as constants
    return (proto.SerializeToString() if changed or fused or peepholes or folded or tables else data), fused


def to_onnx(model: nn.Module, example_input: Tensor, path: str | Path, opset: int = OPSET,
            dynamic_batch: bool = True, qdq: bool = True, qlinear: bool = True, exact: bool = True,
            verify: bool = False) -> dict[str, Any]:
    """Export the prepared ``model`` (as in eval mode) to the ONNX file ``path`` (atomically).

    ``example_input``: a batch of the model's input (its shape and dtype fix the graph's;
    the batch axis stays dynamic unless ``dynamic_batch=False``). ``qdq=False`` writes
    uniform activation quantizers as plain float ops instead of Q/DQ pairs.
    ``verify=True`` runs the file in ONNX Runtime (default session options) on
    ``example_input`` and on fresh batches made from it (pixels shuffled across the batch,
    rescaled by 0.5 and 2, and noise of its mean and std), so inputs near a threshold that
    the example happens to avoid are seen too, and reports the worst difference to PyTorch
    (``max_abs_diff``) and the per-batch ones (``verify_diffs``).

    Returns ``{"path", "bytes", "layers": {layer: {"weight": ..., "act": ...}}, "qlinear":
    [conv node names run as QLinearConv]}`` (see :func:`export_model`) plus
    ``"max_abs_diff"`` when verified.
    """
    if not isinstance(example_input, Tensor):
        raise ValueError(f"example_input must be a tensor, got {type(example_input).__name__}")
    emodel, paths = export_model(model, qdq=qdq)
    x = example_input.detach().cpu()
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of torch.export, which needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        # PRESERVE (the model is in eval mode): BatchNorm is not folded into the weights,
        # so the file holds the weights' level values / codes
        torch.onnx.export(emodel, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.PRESERVE)
    data, fused = _rewrite(buf.getvalue(), qlinear, exact)
    atomic_write_bytes(Path(path), lambda f: f.write(data))
    info: dict[str, Any] = {"path": str(path), "bytes": len(data), "layers": paths, "qlinear": fused}
    if verify:
        import onnxruntime as ort  # optional dependency: pip install nuq[onnx]

        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        batches = verification_batches(x) if dynamic_batch else [x]
        was = model.training
        diffs = []
        with torch.no_grad():
            model.eval()
            for b in batches:
                got = torch.from_numpy(sess.run(None, {"input": b.numpy()})[0])
                ref = model(b.to(next(model.parameters()).device)).cpu()
                diffs.append(float((got - ref).abs().max()))
        model.train(was)
        info["max_abs_diff"] = max(diffs)
        info["verify_diffs"] = diffs
    return info
