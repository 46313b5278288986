"""Checkpoints of a run: written atomically (:mod:`nuq.runs.files`), read with
``weights_only=True``, checked for the structure a run needs; strict state loading that
names what does not match."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
#: entries every run checkpoint holds (what ``rebuild`` and ``nuq eval`` need)
RUN_KEYS = ("config", "model", "num_classes", "in_channels")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (expected a run directory holding {CHECKPOINT}, or a .pt file)")
    return p


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a file; ValueError naming it if it cannot be read."""
    p = Path(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torn or foreign file: say which
        if "weights only load failed" in str(e).lower():
            raise ValueError(f"{p} holds pickled Python objects (e.g. a whole nn.Module), which nuq does not "
                             "unpickle (weights_only=True); save torch.save(model.state_dict(), path) "
                             "instead") from None
        raise ValueError(f"cannot read checkpoint {p}: {' '.join(str(e).split())[:300]}") from e


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of a run directory or file; ValueError unless it is a run checkpoint."""
    p = resolve_checkpoint(path)
    ckpt = load_file(p, map_location)
    missing = [k for k in RUN_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{p} is not a nuq run checkpoint (it lacks {', '.join(missing)}); a plain state_dict "
                         "or saved model can start a run through init_from, not be loaded as a run")
    return ckpt


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Weights to start a run from: ``(state_dict, run checkpoint or None)``.

    Accepts a run directory or run checkpoint, a plain ``state_dict`` saved with
    ``torch.save(model.state_dict(), f)``, or a dict holding one under ``"state_dict"`` or
    ``"model"`` (the usual training-script checkpoints); ``module.`` prefixes of
    DataParallel/DDP models are removed."""
    p = resolve_checkpoint(path)
    obj = load_file(p)
    if isinstance(obj, dict) and all(k in obj for k in RUN_KEYS):
        return obj["model"], obj
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p} holds neither a nuq run checkpoint nor a state_dict (a dict of tensors, or one under "
                         "'state_dict'/'model'); save weights with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, None


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
