"""Evaluate a finished (or interrupted) run directory on its test set."""

from __future__ import annotations

from typing import Any

import torch

from .data import load_dataset, make_loader
from .train.build import qat_summary, rebuild
from .train.checkpoint import load_checkpoint
from .train.evaluate import evaluate
from .train.loop import resolve_device


def evaluate_run(run_dir: str, data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    ckpt = load_checkpoint(run_dir)
    model, cfg = rebuild(ckpt, ckpt["num_classes"], ckpt["in_channels"])
    dev = resolve_device(device)
    test = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, train=False).subset(cfg.data.test_subset)
    with torch.no_grad():
        loader = make_loader(test, cfg.data.eval_batch_size, train=False, workers=cfg.data.workers)
        m = evaluate(model.to(dev), loader, dev)
    return {**m, "quant": qat_summary(cfg.qat), "samples": len(test)}
