"""``nuq eval RUN_DIR``: a finished (or interrupted) run evaluated on its test set."""

from __future__ import annotations

import argparse
from typing import Any

from ..runs import load_run, qat_summary

NAME = "eval"
HELP = "evaluate a run directory on its test set"


def evaluate_run(run_dir: str, data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    import torch  # the loop's imports (tqdm, data loaders) are not needed to parse arguments

    from ..data import load_dataset, make_loader
    from ..train.evaluate import evaluate
    from ..train.loop import resolve_device

    run = load_run(run_dir)
    cfg = run.config
    dev = resolve_device(device)
    test = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, train=False,
                        image_size=cfg.data.image_size).subset(cfg.data.test_subset)
    with torch.no_grad():
        loader = make_loader(test, cfg.data.eval_batch_size, train=False, workers=cfg.data.workers)
        m = evaluate(run.model.to(dev), loader, dev)
    return {**m, "quant": qat_summary(cfg.qat), "samples": len(test)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    m = evaluate_run(args.run_dir, data_dir=args.data_dir, device=args.device)
    print(f"{args.run_dir}: {m['quant']} test top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f} "
          f"({m['samples']} samples)")
    return 0
