"""Build the model of a run: architecture, float weights from ``init_from``, quantized
layers, quantizer initialisation (calibration or inheritance from a higher-bit run)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..models import create_model
from ..prepare import named_quantizers, prepare, signed_inputs
from ..qconfig import QATConfig
from .checkpoint import load_checkpoint
from .config import RunConfig, config_from_dict

QUANT_KEY_PARTS = ("weight_quantizer.", "act_quantizer.", "weight_transform.")


def is_quantizer_key(key: str) -> bool:
    return any(p in key for p in QUANT_KEY_PARTS)


def architecture(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    return create_model(cfg.model.name, num_classes=num_classes, in_channels=in_channels, **cfg.model.kwargs)


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names the missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        def fmt(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = [f"missing: {fmt(missing)}" if missing else "", f"unexpected: {fmt(unexpected)}" if unexpected else "",
                 f"shape differs: {fmt(shapes)}" if shapes else ""]
        raise ValueError(f"{source} does not match the model (another architecture or config?); "
                         + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def rebuild(ckpt: dict[str, Any], num_classes: int, in_channels: int) -> tuple[nn.Module, RunConfig]:
    """The trained model of a checkpoint, float or quantized, with its weights loaded."""
    cfg = config_from_dict(ckpt["config"])
    model = architecture(cfg, num_classes, in_channels)
    if cfg.qat is not None:
        model = prepare(model, cfg.qat, inplace=True, signed_inputs=ckpt.get("signed_inputs"))
    load_strict(model, ckpt["model"], "checkpoint")
    return model, cfg


def build_model(cfg: RunConfig, num_classes: int, in_channels: int, calib: Iterable | None,
                device: torch.device) -> nn.Module:
    """Model of a new run: architecture, ``init_from`` weights, then ``prepare``."""
    torch.manual_seed(cfg.seed)
    model = architecture(cfg, num_classes, in_channels).to(device)
    source: nn.Module | None = None
    if cfg.init_from:
        ckpt = load_checkpoint(cfg.init_from)
        float_state = {k: v for k, v in ckpt["model"].items() if not is_quantizer_key(k)}
        load_strict(model, float_state, f"init_from={cfg.init_from}")
        if ckpt["config"].get("qat") is not None and cfg.qat is not None:
            source, _ = rebuild(ckpt, num_classes, in_channels)
    if cfg.qat is None:
        return model
    if source is not None:
        # progressive fine-tuning: quantizers start from the (higher-bit) source run
        model = prepare(model, cfg.qat, inplace=True, signed_inputs=signed_inputs(source))
        inherit_quantizers(model, source)
        return model.to(device)
    return prepare(model, cfg.qat, calib=calib, inplace=True)


def inherit_quantizers(model: nn.Module, source: nn.Module) -> None:
    """Initialise each quantizer from the same-named quantizer of ``source``."""
    src = dict(named_quantizers(source))
    for name, q in named_quantizers(model):
        if name not in src:
            raise ValueError(f"init_from run has no quantizer {name!r} to initialise from")
        q.inherit(src[name].to(q.initialized.device))


def qat_summary(cfg: QATConfig | None) -> str:
    if cfg is None:
        return "float"
    return f"W{cfg.w_bits}A{cfg.a_bits} {cfg.weight}/{cfg.act}"
