"""Trained float weights shipped inside the package.

``create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist")``
builds the architecture the weights were trained with and loads them. Each shipped model
is two files in ``models/weights/``: ``<model>_<dataset>.pt`` (a plain state_dict, read
with ``weights_only=True``) and ``<model>_<dataset>.json`` (architecture, the run config
that reproduces it, its measured test accuracy, and the SHA-256 of the ``.pt``). A file
that fails its checksum is an error, never a silently different model.

A run config starts from them with ``init_from: pretrained:<dataset>`` (the run's own
``model`` section names the architecture).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = Path(__file__).parent / "weights"
PREFIX = "pretrained:"


def shipped() -> dict[tuple[str, str], dict[str, Any]]:
    """{(model, dataset): record} of every shipped checkpoint."""
    out = {}
    for meta in sorted(WEIGHTS.glob("*.json")):
        rec = json.loads(meta.read_text())
        out[(rec["model"], rec["dataset"])] = {**rec, "file": meta.with_suffix(".pt")}
    return out


def _describe() -> str:
    have = shipped()
    return ", ".join(f"{m} ({d})" for m, d in have) or "none"


def record(name: str, dataset: str) -> dict[str, Any]:
    """The record of a shipped checkpoint; ValueError listing those that exist."""
    rec = shipped().get((name, dataset))
    if rec is None:
        raise ValueError(f"no shipped weights for model {name!r} trained on {dataset!r}; shipped: {_describe()}")
    return rec


def pretrained_state(name: str, dataset: str) -> dict[str, torch.Tensor]:
    """The checksum-verified state_dict of a shipped checkpoint."""
    rec = record(name, dataset)
    raw = rec["file"].read_bytes()
    if hashlib.sha256(raw).hexdigest() != rec["sha256"]:
        raise ValueError(f"shipped weights {rec['file'].name} fail their SHA-256 check (damaged install?); "
                         "reinstall nuq")
    import io

    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def check_arguments(name: str, dataset: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> None:
    rec = record(name, dataset)
    want = {"num_classes": rec["num_classes"], "in_channels": rec["in_channels"], **rec["kwargs"]}
    got = {"num_classes": num_classes, "in_channels": in_channels, **{k: kwargs.get(k, v) for k, v in
                                                                       rec["kwargs"].items()}}
    extra = sorted(set(kwargs) - set(rec["kwargs"]))
    if got != want or extra:
        raise ValueError(f"pretrained={dataset!r} weights of {name!r} are for {want}; got {got}"
                         + (f" and {extra}" if extra else ""))


def load_pretrained(model: nn.Module, name: str, dataset: str) -> nn.Module:
    from ..runs.checkpoint import load_strict

    load_strict(model, pretrained_state(name, dataset), f"shipped weights {name} ({dataset})")
    return model


def save_shipped(state: dict[str, torch.Tensor], name: str, dataset: str, info: dict[str, Any]) -> Path:
    """Write a shipped checkpoint (used once, when a trained run is added to the package)."""
    import io

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().float() if v.is_floating_point() else v.cpu() for k, v in state.items()}, buf)
    raw = buf.getvalue()
    stem = WEIGHTS / f"{name}_{dataset}"
    stem.with_suffix(".pt").write_bytes(raw)
    rec = {"model": name, "dataset": dataset, **info, "sha256": hashlib.sha256(raw).hexdigest()}
    stem.with_suffix(".json").write_text(json.dumps(rec, indent=1) + "\n")
    return stem.with_suffix(".pt")
