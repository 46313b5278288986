"""``nuq export RUN_DIR``: the trained model of a run directory in one of the registered
export formats (:mod:`nuq.export.formats`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..export.formats import ExportSource, available_formats, export_format
from ..runs import load_run

NAME = "export"
HELP = "write a run's quantized model as a packed low-bit file or ONNX"


def _example_input(cfg, in_channels: int, data_dir: str | None, image_size: int | None) -> torch.Tensor:
    """A few real test images (normalised as in training), or noise of ``image_size``."""
    if image_size is not None:
        return torch.randn(8, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    from ..data import load_dataset

    test = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, train=False,
                        image_size=cfg.data.image_size)
    return test.example_batch(8)


def export_run(run_dir: str, fmt: str = "packed", out: str | None = None, data_dir: str | None = None,
               image_size: int | None = None) -> dict[str, Any]:
    """Export the checkpoint of ``run_dir`` as ``fmt`` to ``out`` (default: next to the
    checkpoint, ``model<suffix>``). Returns the writer's report (``path``, ``bytes``,
    ``float32_bytes``, ``ratio`` = float32 size / file size, ...)."""
    spec = export_format(fmt)
    run = load_run(run_dir)
    if not run.quantized:
        raise ValueError(f"{run_dir} is a float run (qat: null); export writes quantized models, train one with "
                         "a qat section first")
    path = Path(out) if out else run.path.parent / f"model{spec.suffix}"
    source = ExportSource(meta=run.meta(), example_input=lambda: _example_input(
        run.config, run.checkpoint["in_channels"], data_dir, image_size))
    return spec.write(run.model, path, source)


def add_arguments(p: argparse.ArgumentParser) -> None:
    formats = available_formats()
    p.add_argument("run_dir")
    p.add_argument("--format", "-f", choices=formats, default=formats[0],
                   help="; ".join(f"{f}: {export_format(f).help}" for f in formats))
    p.add_argument("--out", "-o", help="output file (default: RUN_DIR/model.<suffix of the format>)")
    p.add_argument("--data-dir", help="dataset directory, for the ONNX example batch")
    p.add_argument("--image-size", type=int, help="ONNX: trace with noise of this size instead of test images")


def run(args: argparse.Namespace) -> int:
    r = export_run(args.run_dir, args.format, out=args.out, data_dir=args.data_dir, image_size=args.image_size)
    print(f"{r['path']}: {args.format} {r['bytes']} bytes vs float32 {r['float32_bytes']} bytes "
          f"({r['ratio']:.2f}x smaller)")
    if "max_abs_diff" in r:
        print(f"ONNX Runtime vs PyTorch on {len(r['verify_diffs'])} batches (test images and variations): "
              f"worst max abs difference {r['max_abs_diff']:.3g}")
    return 0
