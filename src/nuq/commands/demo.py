"""``nuq demo``: the main job in a few minutes on 2 CPU cores.

Trains a float ResNet-20 (width 8) on a 10k-image subset of Fashion-MNIST for 3 epochs,
then runs 2 epochs of W2A2 QAT from that checkpoint with each method (LSQ and nuLSQ;
first/last layers at 8 bits), and prints float vs quantized test accuracy on the full
10k test set. The runs are the first cells of configs/compare/fmnist_nulsq_vs_lsq.yaml.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config_utils import apply_overrides
from ..quantizers import available_quantizers, quantizer_class
from ..runs.config import config_from_dict

NAME = "demo"
HELP = "short real run: float ResNet-20 on Fashion-MNIST, then W2A2 QAT; prints a table"

DEFAULT_METHODS = ("lsq", "nulsq")


def demo_configs(out_dir: str, data_dir: str | None, quick: bool, methods: list[str]) -> list[dict]:
    common = {
        "model": {"name": "resnet20", "kwargs": {"width": 8}},
        "data": {"data_dir": data_dir, "train_subset": 1000 if quick else 10000, "test_subset": 500 if quick else None},
        "seed": 0,
    }
    float_dir = str(Path(out_dir) / "float")
    cfgs = [{**common, "name": "float", "out_dir": float_dir, "epochs": 1 if quick else 3,
             "optim": {"lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0.2}}]
    for m in methods:
        cfgs.append({**common, "name": f"{m}-w2a2", "out_dir": str(Path(out_dir) / f"{m}_w2a2"),
                     "epochs": 1 if quick else 2, "init_from": float_dir,
                     "optim": {"lr": 0.02, "weight_decay": 1e-4, "q_optimizer": "adamw", "q_lr_mult": 0.01,
                               "warmup_epochs": 0.2},
                     "qat": {"weight": m, "act": m, "w_bits": 2, "a_bits": 2, "first_last": "8bit",
                             "w_init": "mse" if "mse" in quantizer_class(m).init_methods else "auto"}})
    return cfgs


def run_demo(out_dir: str = "runs/demo", data_dir: str | None = None, quick: bool = False,
             methods: list[str] | None = None, overrides: list[str] | None = None) -> list[dict]:
    """``overrides``: ``key=value`` strings applied to every run of the demo (e.g.
    ``train.compile=true``)."""
    from ..train import train

    methods = list(methods or [m for m in DEFAULT_METHODS if m in available_quantizers()])
    rows = []
    for raw in demo_configs(out_dir, data_dir, quick, methods):
        cfg = config_from_dict(apply_overrides(raw, list(overrides or [])))
        t0 = time.perf_counter()
        final = train(cfg)
        rows.append({**final, "wall_s": time.perf_counter() - t0})
    print()
    print(format_table(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| run | quantization | test top-1 (%) | test top-5 (%) | train time (s) |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['quant']} | {r['test_top1']:.2f} | {r['test_top5']:.2f} "
                     f"| {r['wall_s']:.0f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--data-dir")
    p.add_argument("--quick", action="store_true", help="tiny subset, for smoke tests (results not meaningful)")
    p.add_argument("--methods", nargs="+", default=None, help="QAT methods to compare (default: lsq nulsq)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a key of every demo run, e.g. train.compile=true (repeatable)")


def run(args: argparse.Namespace) -> int:
    run_demo(out_dir=args.out_dir, data_dir=args.data_dir, quick=args.quick, methods=args.methods,
             overrides=args.set)
    return 0
