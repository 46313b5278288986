"""``prepare``: swap the Conv2d/Linear layers of any model for quantized ones, following
the layer policy of a :class:`QATConfig`, and initialise every quantizer.

Weight quantizers are initialised from the weights at once. Activation quantizers are
initialised from calibration batches when ``calib`` is given: the model runs in eval
mode (BatchNorm statistics untouched) with activations left float, each quantized
layer keeps a fixed-seed subsample of its input, and each activation quantizer is then
initialised from its sample. Without ``calib`` they initialise lazily from the first
training batch, as LSQ does. Under torch.distributed every rank ends with rank 0's
quantizer parameters.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from .nn.attention import split_attention
from .nn.batchnorm import exact_batchnorm
from .nn.layers import QuantConv2d, QuantLinear
from .nn.transforms import make_transform
from .nn.walk import float_layers, named_quantizers, quant_layers, set_module
from .qconfig import LayerSpec, QATConfig
from .quantizers import make_quantizer
from .quantizers.base import check_finite

#: elements of each calibration batch kept per layer
CALIB_SAMPLE = 1 << 15


def _batches(calib: Iterable) -> Iterator[Tensor]:
    for b in calib:
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, Tensor):
            raise ValueError(f"calib must yield tensors or (input, target) pairs, got {type(x).__name__}")
        check_finite(x, "calib batch")
        yield x


@torch.no_grad()
def _record_inputs(model: nn.Module, layers: list[tuple[str, nn.Module]], calib: Iterable) -> dict[str, Tensor]:
    """Run ``calib`` through ``model`` in eval mode and subsample each layer's input."""
    samples: dict[str, list[Tensor]] = {n: [] for n, _ in layers}
    gen = torch.Generator().manual_seed(0)

    def hook(name):
        def fn(_m, args):
            x = args[0].detach().reshape(-1).float()
            if x.numel() > CALIB_SAMPLE:
                x = x[torch.randint(x.numel(), (CALIB_SAMPLE,), generator=gen).to(x.device)]
            samples[name].append(x.cpu())
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers]
    was_training = model.training
    model.eval()
    fresh = untrained_batchnorms(model)
    saved = [copy.deepcopy(m.state_dict()) for m in fresh]
    for m in fresh:
        m.train()
    try:
        seen = 0
        for x in _batches(calib):
            model(x.to(next(model.parameters()).device))
            seen += 1
        if seen == 0:
            raise ValueError("calib yielded no batches")
    finally:
        for h in handles:
            h.remove()
        for m, state in zip(fresh, saved):
            m.load_state_dict(state)
        model.train(was_training)
    return {n: torch.cat(v) for n, v in samples.items() if v}


def untrained_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose running statistics are still their initial values (mean 0,
    variance 1, no batch tracked): the model has never been trained.

    Calibration runs such layers on batch statistics, as training will, and restores their
    buffers afterwards. In eval mode their unit statistics shrink the signal of a deep
    untrained net by orders of magnitude (torchvision's EfficientNet-B0: layer inputs of
    ~1e-11 by ``features.5``), the activation quantizers would be calibrated to steps of
    1e-13, every training input would clip, and the BatchNorms after those constant outputs
    multiply the gradient by 1/sqrt(eps) each: 1e24 at W8A8 on the first step."""
    out = []
    for m in model.modules():
        if (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                and int(m.num_batches_tracked) == 0 and bool((m.running_mean == 0).all())
                and bool((m.running_var == 1).all())):
            out.append(m)
    return out


def _build_layer(layer: nn.Module, spec: LayerSpec, cfg: QATConfig, act_signed: bool) -> nn.Module:
    is_default_w = spec.weight == cfg.weight
    w_q = a_q = transform = None
    if spec.weight is not None:
        per_channel = cfg.per_channel and spec.weight == cfg.weight
        w_q = make_quantizer(spec.weight, bits=spec.w_bits, signed=True, role="weight", grad_scale=cfg.grad_scale,
                             per_channel=per_channel, channels=layer.weight.shape[0] if per_channel else None,
                             **(cfg.weight_kwargs if is_default_w else {}))
        if spec.weight_transform is not None:
            transform = make_transform(spec.weight_transform, context={"bits": spec.w_bits})
    if spec.act is not None:
        kwargs = dict(cfg.act_kwargs) if spec.act == cfg.act else {}
        a_q = make_quantizer(spec.act, bits=spec.a_bits, signed=act_signed, role="activation",
                             grad_scale=cfg.grad_scale, **kwargs)
    cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
    new = cls.from_float(layer, weight_quantizer=w_q, act_quantizer=a_q, weight_transform=transform)
    new.to(layer.weight.device)  # quantizers are built on the CPU; follow the layer (e.g. to the GPU)
    if w_q is not None:
        init = cfg.w_init if is_default_w and cfg.w_init in w_q.init_methods else w_q.init_methods[0]
        w_q.initialize(new.float_weight().detach(), method=init)
    return new


def prepare(model: nn.Module, config: QATConfig, calib: Iterable | None = None, inplace: bool = False,
            signed_inputs: dict[str, bool] | None = None) -> nn.Module:
    """Return ``model`` with quantized layers per ``config`` (a copy unless ``inplace``).

    ``calib``: optional iterable of input tensors (or (input, target) pairs) used to
    decide activation signedness and initialise the activation quantizers.
    ``signed_inputs``: {layer name: signed} as returned by :func:`signed_inputs` of a
    prepared model; rebuilds the same quantizers without calibration data (loading).
    """
    if not isinstance(config, QATConfig):
        raise ValueError(f"config must be a nuq.QATConfig, got {type(config).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    split_attention(model)  # nn.MultiheadAttention's projections as Linear modules that run
    targets = float_layers(model)
    if not targets:
        raise ValueError("model has no nn.Conv2d or nn.Linear layer to quantize")
    if calib is not None and iter(calib) is calib:
        calib = list(calib)  # a one-shot iterator: kept, it is read again for BatchNorm below
    inputs = _record_inputs(model, targets, calib) if calib is not None else {}
    _check_patterns(config, [n for n, _ in targets])
    first, last = targets[0][0], targets[-1][0]
    specs = {}
    for name, layer in targets:
        is_ds = isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and any(
            fnmatch.fnmatchcase(name, p) for p in config.downsample_patterns)
        spec = config.layer_spec(name, name == first, name == last, is_ds)
        if spec is not None:
            specs[name] = spec
    _check_called(model, specs, inputs if calib is not None else None)
    for name, layer in targets:
        spec = specs.get(name)
        if spec is None:
            continue
        if signed_inputs is not None and name in signed_inputs:
            signed = signed_inputs[name]
        elif config.act_signed == "auto":
            signed = bool((inputs[name] < 0).any()) if name in inputs else name == first
        else:
            signed = bool(config.act_signed)
        set_module(model, name, _build_layer(layer, spec, config, signed))
    if calib is not None:
        # activation quantizers start from the *float* model's layer inputs: a weight
        # transform (e.g. APoT weight normalization) rescales conv outputs, which eval-mode
        # BatchNorm would not undo, while in training BN renormalises them back to this scale
        _init_act_quantizers(model, inputs, "mse" if config.a_init == "auto" else config.a_init)
        if any(m.weight_transform is not None for _, m in quant_layers(model)):
            reestimate_batchnorm(model, calib)
    exact_batchnorm(model)
    broadcast_quantizers(model)
    return model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, calib: Iterable) -> None:
    """Measure every BatchNorm's running statistics again on ``calib`` (cumulative average),
    the rest of the model in eval mode.

    ``prepare`` calls it when a weight transform changed the weights (APoT weight
    normalization, DoReFa's tanh, N2UQ's entropy-preserving scale): the convolutions then
    output another scale than the one the float model's statistics were measured on, and
    eval mode, which uses those statistics, would be far off (a W8A8 ResNet-20 with APoT's
    weight normalization scored 10.8% in eval right after prepare, 89% after this)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    device = next(model.parameters()).device
    try:
        for x in _batches(calib):
            model(x.to(device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)


def _check_called(model: nn.Module, specs: dict, inputs: dict[str, Tensor] | None) -> None:
    """Refuse to quantize layers whose module never runs: their weight is read by a
    functional elsewhere (torchvision's Swin passes ``qkv.weight``; subclasses of
    nn.MultiheadAttention, which ``split_attention`` leaves alone, hand ``out_proj.weight`` to
    ``F.multi_head_attention_forward``), so a quantized copy would change nothing while being
    counted as low-bit. Known owners are checked always; with calibration data, every layer
    must have been called."""
    owned = {f"{n}.{c}" if n else c for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
             for c, _ in m.named_children()}
    bypassed = [n for n in specs if n in owned or (inputs is not None and n not in inputs)]
    if bypassed:
        raise ValueError(
            f"layer(s) {', '.join(sorted(bypassed))} are never called as modules (their weight is used by a "
            "functional, e.g. torchvision's Swin attention), so quantizing them would change nothing; leave them "
            f"float with skip={sorted(set(bypassed))!r} (or a pattern such as '*.out_proj')")


def _check_patterns(config: QATConfig, names: list[str]) -> None:
    """Every ``skip`` and ``overrides`` pattern must name at least one layer: a pattern that
    matches nothing is a typo, and the run would silently be another model."""
    for arg, patterns in (("skip", config.skip), ("overrides", tuple(config.overrides))):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                shown = ", ".join(names[:6]) + (f", ... ({len(names)} layers)" if len(names) > 6 else "")
                raise ValueError(f"{arg} pattern {p!r} matches no Conv2d/Linear layer of the model; "
                                 f"its layers are: {shown}")


def signed_inputs(model: nn.Module) -> dict[str, bool]:
    """{layer name: whether its activation quantizer is signed} of a prepared model."""
    return {n: m.act_quantizer.signed for n, m in quant_layers(model) if m.act_quantizer is not None}


@torch.no_grad()
def calibrate(model: nn.Module, calib: Iterable, method: str = "mse") -> None:
    """(Re-)initialise every activation quantizer of a prepared model from ``calib``.

    Activations stay float while the sample is taken (weights stay quantized);
    BatchNorm statistics are untouched (eval mode). ``prepare(calib=...)`` instead uses
    the inputs of the float model before any layer is swapped.
    """
    layers = [(n, m) for n, m in quant_layers(model) if m.act_quantizer is not None]
    stash = {n: m.act_quantizer for n, m in layers}
    for _, m in layers:
        m.act_quantizer = None
    try:
        inputs = _record_inputs(model, layers, calib)
    finally:
        for n, m in layers:
            m.act_quantizer = stash[n]
    _init_act_quantizers(model, inputs, method)


def _init_act_quantizers(model: nn.Module, inputs: dict[str, Tensor], method: str) -> None:
    """Initialise each layer's activation quantizer from its recorded input sample."""
    for n, m in quant_layers(model):
        q = m.act_quantizer
        if q is not None and n in inputs:
            q.initialize(inputs[n].to(m.weight.device),
                         method=method if method in q.init_methods else q.init_methods[0])


def broadcast_quantizers(model: nn.Module) -> None:
    """Under torch.distributed, copy rank 0's quantizer parameters and buffers to all ranks."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for _, q in named_quantizers(model):
        for t in list(q.parameters(recurse=False)) + list(q.buffers(recurse=False)):
            torch.distributed.broadcast(t.data, src=0)
        q._init_done = bool(q.initialized)

