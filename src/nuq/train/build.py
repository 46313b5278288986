"""Build the model of a new run: architecture, float weights from ``init_from``, quantized
layers, quantizer initialisation (calibration or inheritance from a higher-bit run)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..models.pretrained import PREFIX, check_arguments, load_pretrained
from ..nn.walk import named_quantizers
from ..prepare import prepare, signed_inputs
from ..runs.checkpoint import load_checkpoint, load_strict, load_weights
from ..runs.config import RunConfig
from ..runs.load import architecture, is_quantizer_key, rebuild


def build_model(cfg: RunConfig, num_classes: int, in_channels: int, calib: Iterable | None,
                device: torch.device) -> nn.Module:
    """Model of a new run: architecture, ``init_from`` weights, then ``prepare``."""
    torch.manual_seed(cfg.seed)
    model = architecture(cfg, num_classes, in_channels).to(device)
    source: nn.Module | None = None
    if cfg.init_from and cfg.init_from.startswith(PREFIX):
        _load_shipped(model, cfg, cfg.init_from, num_classes, in_channels)
    elif cfg.init_from:
        state, ckpt = load_weights(cfg.init_from)
        float_state = {k: v for k, v in state.items() if not is_quantizer_key(k)}
        load_strict(model, float_state, f"init_from={cfg.init_from}")
        if ckpt is not None and ckpt["config"].get("qat") is not None and cfg.qat is not None:
            source, _ = rebuild(ckpt, num_classes, in_channels)
    if cfg.qat is None:
        return model
    if source is not None:
        # progressive fine-tuning: quantizers start from the (higher-bit) source run
        model = prepare(model, cfg.qat, inplace=True, signed_inputs=signed_inputs(source))
        inherit_quantizers(model, source)
        return model.to(device)
    return prepare(model, cfg.qat, calib=calib, inplace=True)


def _load_shipped(model: nn.Module, cfg: RunConfig, source: str, num_classes: int, in_channels: int) -> nn.Module:
    """Load the shipped weights named by ``source`` (``pretrained:<dataset>``) into ``model``,
    the run's own architecture, after checking they were trained for it."""
    dataset = source[len(PREFIX):]
    check_arguments(cfg.model.name, dataset, num_classes, in_channels, dict(cfg.model.kwargs))
    return load_pretrained(model, cfg.model.name, dataset)


def build_teacher(cfg: RunConfig, num_classes: int, in_channels: int, device: torch.device) -> nn.Module | None:
    """The frozen teacher of ``distill.teacher``: a run directory or checkpoint, or
    ``pretrained:<dataset>`` (the shipped weights of the run's own architecture)."""
    teacher = cfg.distill.teacher
    if not teacher:
        return None
    try:
        if teacher.startswith(PREFIX):
            model = _load_shipped(architecture(cfg, num_classes, in_channels), cfg, teacher, num_classes,
                                  in_channels)
        else:
            model, _ = rebuild(load_checkpoint(teacher), num_classes, in_channels)
    except ValueError as e:
        raise ValueError(f"distill.teacher={teacher}: {e}") from e
    return model.to(device).eval().requires_grad_(False)


def inherit_quantizers(model: nn.Module, source: nn.Module) -> None:
    """Initialise each quantizer from the same-named quantizer of ``source``."""
    src = dict(named_quantizers(source))
    for name, q in named_quantizers(model):
        if name not in src:
            raise ValueError(f"init_from run has no quantizer {name!r} to initialise from")
        q.inherit(src[name].to(q.initialized.device))
