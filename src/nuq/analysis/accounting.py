"""Operation counts, model size and quantization error, as the APoT paper reports them.

``count_model(model, input_shape)`` runs one forward pass with hooks on every convolution
and linear layer and returns, per layer and in total:

* ``macs``   -- multiply-accumulates per sample.
* ``flops``  -- MACs that run in floating point (the paper's convention: its Table 1 lists
  1.82G "FLOPs" for a float ResNet-18, which is its MAC count).
* ``bitops`` -- binary operations (Zhou et al., 2016, as used in APoT Sec. 4.1): an m-bit by
  l-bit fixed-point multiply costs m*l; with an APoT / PoT weight made of n powers-of-two
  terms, it needs n shift-adds of the m-bit activation, i.e. n*m. A float MAC counts 32*32.
* ``fixops`` -- bitops / 64 for fixed-point layers (one FixOP = one 8-bit x 8-bit multiply,
  Sec. 4.1); a float MAC counts 1 FixOP (Table 1 lists FLOPs in the FixOPs column of float
  models).
* model size -- every parameter at 32 bits, except the weight of a layer with a weight
  quantizer, stored at the quantizer's bit width; MB = 10^6 bytes (Table 1: 11.69M float
  parameters of ResNet-18 = 46.8 MB). Buffers (BatchNorm statistics, level tables) are not
  counted.

A layer is fixed point when its weight quantizer has uniform output levels
(``uniform_output``) or powers-of-two levels (``pot_terms``: the number n of additive terms,
APoT Eq. 5/6) and its activation quantizer is one of those too (the paper counts an APoT
activation as an m-bit operand). A layer with a float side, or with arbitrary non-uniform
levels (Lloyd, nuLSQ), is counted as float, as Table 3 does for its Lloyd quantizer.
Layers are found as ``nn.Conv*``/``nn.Linear`` modules; their quantizers are read from the
attributes ``weight_quantizer`` and ``act_quantizer`` (``nuq.nn.QuantConv2d``/``QuantLinear``),
absent or None meaning float.

Note on the paper's Table 1: the uniform rows reproduce with these rules (ResNet-18 with
8-bit first/last layers: 4/4 bits -> 542M FixOPs), but the APoT rows are about 0.75x the
uniform count rather than the n/b (= 0.5x at 4 bits) that the text's n*m/64 rule gives;
``count_model`` follows the text.

``quantization_error(x, quantizer)`` splits the mean squared quantization error into the
clipping and projection errors of Eq. 14 (Appendix C.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

FLOAT_BITS = 32


@dataclass
class LayerCount:
    """Counts of one convolution / linear layer, per sample."""

    name: str
    kind: str
    macs: int
    weight_params: int
    w_bits: int | None  # None: float weight
    a_bits: int | None  # None: float input
    w_scheme: str  # "uniform" | "shift-add" | "non-uniform" | "float", per operand
    a_scheme: str
    pot_terms: int | None = None  # additive powers-of-two terms of the weight levels
    scheme: str = ""  # how the MACs are counted: "uniform" | "shift-add" | "float"
    bitops: float = 0.0
    fixops: float = 0.0
    flops: float = 0.0


@dataclass
class ModelCount:
    """Per-layer counts and totals; ``size_bits`` counts every parameter once."""

    layers: list[LayerCount] = field(default_factory=list)
    params: int = 0
    size_bits: int = 0

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> float:
        return sum(layer.flops for layer in self.layers)

    @property
    def bitops(self) -> float:
        return sum(layer.bitops for layer in self.layers)

    @property
    def fixops(self) -> float:
        return sum(layer.fixops for layer in self.layers)

    @property
    def size_mb(self) -> float:
        return self.size_bits / 8 / 1e6

    def as_dict(self) -> dict:
        return {"macs": self.macs, "flops": self.flops, "bitops": self.bitops, "fixops": self.fixops,
                "params": self.params, "size_mb": self.size_mb, "layers": [vars(x) for x in self.layers]}

    def table(self) -> str:
        """Plain-text table, one row per layer plus the total."""
        rows = [f"{'layer':30s} {'W/A':>7s} {'scheme':>9s} {'MACs':>12s} {'FixOPs':>12s}"]
        for x in self.layers:
            wa = f"{x.w_bits or 32}/{x.a_bits or 32}"
            rows.append(f"{x.name[:30]:30s} {wa:>7s} {x.scheme:>9s} {x.macs:12,d} {x.fixops:12,.0f}")
        rows.append(f"{'total':30s} {'':>7s} {'':>9s} {self.macs:12,d} {self.fixops:12,.0f}  "
                    f"size {self.size_mb:.3f} MB, {self.params:,d} params")
        return "\n".join(rows)


def _operand(q) -> tuple[str, int | None, int | None]:
    """(scheme, bits, pot terms) of a quantizer seen as a multiplication operand."""
    if q is None:
        return "float", None, None
    terms = getattr(q, "pot_terms", None)
    if terms is not None:
        return "shift-add", q.bits, int(terms)
    if getattr(q, "uniform_output", False):
        return "uniform", q.bits, None
    return "non-uniform", q.bits, None


def _layer_macs(m: nn.Module, inp: Tensor, out: Tensor, batch: int) -> int:
    if isinstance(m, nn.Linear):
        return out.numel() // batch * m.in_features
    k = math.prod(m.kernel_size)
    if m.transposed:
        return inp.numel() // batch * (m.out_channels // m.groups) * k
    return out.numel() // batch * (m.in_channels // m.groups) * k


def _cost(layer: LayerCount) -> None:
    fixed_w = layer.w_scheme in ("uniform", "shift-add")
    fixed_a = layer.a_scheme in ("uniform", "shift-add")
    if fixed_w and fixed_a:
        per_mac = (layer.pot_terms if layer.w_scheme == "shift-add" else layer.w_bits) * layer.a_bits
        layer.scheme = layer.w_scheme
        layer.bitops = float(layer.macs * per_mac)
        layer.fixops = layer.bitops / 64
    else:
        layer.scheme = "float"
        layer.flops = float(layer.macs)
        layer.fixops = float(layer.macs)
        layer.bitops = float(layer.macs * FLOAT_BITS * FLOAT_BITS)


@torch.no_grad()
def count_model(model: nn.Module, input_shape) -> ModelCount:
    """Count MACs, FLOPs, BitOPs, FixOPs and size of ``model`` for one input of
    ``input_shape`` (including the batch axis; counts are per sample). Runs one forward
    pass in eval mode with a zero input and restores every buffer and training flag."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"input_shape={input_shape!r}; give the full input shape with the batch axis first, "
                         "e.g. (1, 3, 32, 32)")
    batch = shape[0]
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32

    layers: dict[str, LayerCount] = {}
    order: list[str] = []

    def hook(name: str):
        def fn(m: nn.Module, args, out) -> None:
            macs = _layer_macs(m, args[0], out, batch)
            if name in layers:  # a layer called more than once (shared weights)
                layers[name].macs += macs
                return
            w_scheme, w_bits, terms = _operand(getattr(m, "weight_quantizer", None))
            a_scheme, a_bits, _ = _operand(getattr(m, "act_quantizer", None))
            layers[name] = LayerCount(name, "linear" if isinstance(m, nn.Linear) else "conv", macs,
                                      m.weight.numel(), w_bits, a_bits, w_scheme, a_scheme, terms)
            order.append(name)
        return fn

    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    handles = [m.register_forward_hook(hook(n)) for n, m in targets]
    modes = {m: m.training for m in model.modules()}
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        model.eval()
        model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for n, b in model.named_buffers():
            if n in saved:
                b.copy_(saved[n])

    result = ModelCount()
    for name in order:  # costed after the pass, once the MACs of repeated calls are summed
        _cost(layers[name])
        result.layers.append(layers[name])

    quantized_weights = {}
    for m in model.modules():
        wq = getattr(m, "weight_quantizer", None)
        w = getattr(m, "weight", None)
        if wq is not None and isinstance(w, nn.Parameter):
            quantized_weights[id(w)] = int(wq.bits)
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        result.params += p.numel()
        result.size_bits += p.numel() * quantized_weights.get(id(p), FLOAT_BITS)
    return result


@torch.no_grad()
def quantization_error(x: Tensor, quantizer) -> dict[str, float]:
    """Eq. 14: mean squared error split into clipping error (elements outside the range
    [min level, max level], measured to the range end) and projection error (elements
    inside, measured to their quantized value), both divided by the element count I.
    Also returns their sum ``total`` and ``mse`` = mean((x - Q(x))^2) (equal to ``total``
    for quantizers whose clipped elements land on the range end, e.g. RCF, LSQ)."""
    if x.numel() == 0:
        raise ValueError("x is empty")
    y = quantizer.quantize(x).to(torch.float64)
    xd = x.detach().to(torch.float64)
    lv = quantizer.levels().to(torch.float64)
    lo, hi = lv[..., 0], lv[..., -1]
    if lv.dim() == 2:  # per channel: bounds along axis 0
        view = (-1,) + (1,) * (x.dim() - 1)
        lo, hi = lo.view(view), hi.view(view)
    clipped = xd.clamp(lo, hi)
    outside = (xd < lo) | (xd > hi)
    n = x.numel()
    clip = float(torch.where(outside, (xd - clipped) ** 2, 0.0).sum()) / n
    proj = float(torch.where(outside, 0.0, (xd - y) ** 2).sum()) / n
    return {"clip": clip, "proj": proj, "total": clip + proj, "mse": float(((xd - y) ** 2).mean())}
