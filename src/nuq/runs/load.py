"""A run's model from its checkpoint: the architecture its config names, ``prepare`` with
the saved activation signedness, and the trained state loaded strictly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..models import create_model
from ..prepare import prepare
from ..qconfig import QATConfig
from .checkpoint import load_checkpoint, load_strict, resolve_checkpoint
from .config import RunConfig, config_from_dict

QUANT_KEY_PARTS = ("weight_quantizer.", "act_quantizer.", "weight_transform.")


def is_quantizer_key(key: str) -> bool:
    return any(p in key for p in QUANT_KEY_PARTS)


def architecture(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    return create_model(cfg.model.name, num_classes=num_classes, in_channels=in_channels, **cfg.model.kwargs)


def rebuild(ckpt: dict[str, Any], num_classes: int | None = None,
            in_channels: int | None = None) -> tuple[nn.Module, RunConfig]:
    """The trained model of a checkpoint, float or quantized, with its weights loaded."""
    cfg = config_from_dict(ckpt["config"])
    model = architecture(cfg, ckpt["num_classes"] if num_classes is None else num_classes,
                         ckpt["in_channels"] if in_channels is None else in_channels)
    if cfg.qat is not None:
        model = prepare(model, cfg.qat, inplace=True, signed_inputs=ckpt.get("signed_inputs"))
    load_strict(model, ckpt["model"], "checkpoint")
    return model, cfg


@dataclass
class LoadedRun:
    """A run loaded from disk: its model (CPU, eval mode), config, checkpoint and path."""

    model: nn.Module
    config: RunConfig
    checkpoint: dict[str, Any]
    path: Path

    @property
    def quantized(self) -> bool:
        return self.config.qat is not None

    def meta(self) -> dict[str, Any]:
        """What an exported file needs to rebuild the architecture, and where it came from."""
        ck = self.checkpoint
        return {"model": ck["config"]["model"], "num_classes": ck["num_classes"], "in_channels": ck["in_channels"],
                "config": ck["config"], "source": str(self.path)}


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Load the run of a run directory or checkpoint file (ValueError if it is none)."""
    p = resolve_checkpoint(path)
    ckpt = load_checkpoint(p)
    model, cfg = rebuild(ckpt)
    return LoadedRun(model.eval(), cfg, ckpt, p)


def qat_summary(cfg: QATConfig | None) -> str:
    if cfg is None:
        return "float"
    return f"W{cfg.w_bits}A{cfg.a_bits} {cfg.weight}/{cfg.act}"
