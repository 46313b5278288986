"""``nuq export RUN_DIR``: the trained model of a run directory as a packed file or ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..train.build import rebuild
from ..train.checkpoint import load_checkpoint, resolve_checkpoint
from .onnx_export import to_onnx
from .packed import float32_bytes, save_packed

FORMATS = ("packed", "onnx")
SUFFIX = {"packed": ".nuqpack", "onnx": ".onnx"}


def _example_input(cfg, in_channels: int, data_dir: str | None, image_size: int | None) -> torch.Tensor:
    """A few real test images (normalised as in training), or noise of ``image_size``."""
    if image_size is not None:
        return torch.randn(8, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    from ..data import load_dataset

    test = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, train=False)
    return test.example_batch(8)


def export_run(run_dir: str, fmt: str = "packed", out: str | None = None, data_dir: str | None = None,
               image_size: int | None = None) -> dict[str, Any]:
    """Export the checkpoint of ``run_dir`` as ``fmt`` to ``out`` (default: next to the
    checkpoint, ``model.nuqpack`` / ``model.onnx``). Returns the writer's report plus
    ``float32_bytes`` and ``ratio`` (float32 size / file size)."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}; allowed: {', '.join(FORMATS)}")
    ckpt_path = resolve_checkpoint(run_dir)
    ckpt = load_checkpoint(ckpt_path)
    model, cfg = rebuild(ckpt, ckpt["num_classes"], ckpt["in_channels"])
    if cfg.qat is None:
        raise ValueError(f"{run_dir} is a float run (qat: null); export writes quantized models, train one with "
                         "a qat section first")
    model.eval()
    path = Path(out) if out else ckpt_path.parent / f"model{SUFFIX[fmt]}"
    if fmt == "packed":
        meta = {"model": ckpt["config"]["model"], "num_classes": ckpt["num_classes"],
                "in_channels": ckpt["in_channels"], "config": ckpt["config"], "source": str(ckpt_path)}
        return save_packed(model, path, meta=meta)
    x = _example_input(cfg, ckpt["in_channels"], data_dir, image_size)
    try:
        import onnxruntime  # noqa: F401
        verify = True
    except ImportError:
        verify = False
    info = to_onnx(model, x, path, verify=verify)
    fb = float32_bytes(model)
    return {**info, "float32_bytes": fb, "ratio": fb / info["bytes"]}
