"""``nuq demo``: the main job in a few minutes on 2 CPU cores -- quantize a trained model.

Starts from the float ResNet-20 (width 16) shipped with nuq, trained on Fashion-MNIST
(:mod:`nuq.models.pretrained`), and measures it on the full 10k test set. Then, for each
method (LSQ and nuLSQ by default), W2A2 QAT from those weights -- first/last layers at 8
bits, MSE initialisation, 200 steps (2 passes over 12.8k training images) -- the full test set again,
and the real packed 2-bit file. Prints float vs quantized accuracy, file size and time.

``--from-scratch`` first trains the float model with the shipped model's own config (the
whole train set for 20 epochs: over an hour on 2 cores). ``--quick`` is a smoke run on a
few hundred images (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from ..config_utils import apply_overrides
from ..models.pretrained import PREFIX, record
from ..quantizers import available_quantizers, quantizer_class
from ..runs.config import config_from_dict

NAME = "demo"
HELP = "quantize the shipped float ResNet-20 to W2A2 with LSQ and nuLSQ on Fashion-MNIST; prints a table"

DEFAULT_METHODS = ("lsq", "nulsq")
MODEL, DATASET = "resnet20", "fashion_mnist"
QAT_IMAGES, QUICK_IMAGES = 12800, 256
#: 2 passes over QAT_IMAGES (200 steps): LSQ/nuLSQ W2A2 land 1.6 points below float in about
#: 2.5 minutes on 2 cores; one pass left them 2.2-2.3 points below
QAT_EPOCHS = 2


def float_config(out_dir: str, data_dir: str | None, quick: bool) -> dict:
    """The shipped model's training config, redirected to ``out_dir/float``."""
    raw = copy.deepcopy(record(MODEL, DATASET)["config"])
    raw.update(name="float", out_dir=str(Path(out_dir) / "float"), progress=not quick, ckpt_every_steps=None)
    raw["data"] = {**raw["data"], "data_dir": data_dir}
    raw["train"] = {}
    if quick:
        raw.update(epochs=1)
        raw["data"].update(train_subset=QUICK_IMAGES, test_subset=500)
    return raw


def demo_configs(out_dir: str, data_dir: str | None, quick: bool, methods: list[str],
                 init_from: str = PREFIX + DATASET) -> list[dict]:
    """The QAT runs of the demo, each starting from ``init_from``."""
    rec = record(MODEL, DATASET)
    cfgs = []
    for m in methods:
        cfgs.append({"name": f"{m}-w2a2", "out_dir": str(Path(out_dir) / f"{m}_w2a2"), "seed": 0,
                     "epochs": 1 if quick else QAT_EPOCHS,
                     "model": {"name": MODEL, "kwargs": rec["kwargs"]}, "init_from": init_from,
                     "data": {"name": DATASET, "data_dir": data_dir, "train_subset": QUICK_IMAGES if quick
                              else QAT_IMAGES, "test_subset": 500 if quick else None},
                     "optim": {"lr": 0.01, "weight_decay": 1e-4, "q_optimizer": "adamw", "q_lr_mult": 0.01,
                               "warmup_epochs": 0.1},
                     "qat": {"weight": m, "act": m, "w_bits": 2, "a_bits": 2, "first_last": "8bit",
                             "w_init": "mse" if "mse" in quantizer_class(m).init_methods else "auto"},
                     "progress": not quick})
    return cfgs


def _shipped_float_row(data_dir: str | None, test_subset: int | None) -> dict:
    import torch

    from ..data import load_dataset, make_loader
    from ..export.packed import float32_bytes
    from ..models import create_model
    from ..train.evaluate import evaluate

    rec = record(MODEL, DATASET)
    t0 = time.perf_counter()
    model = create_model(MODEL, num_classes=rec["num_classes"], in_channels=rec["in_channels"],
                         pretrained=DATASET, **rec["kwargs"]).eval()
    test = load_dataset(DATASET, data_dir, train=False).subset(test_subset)
    with torch.no_grad():
        m = evaluate(model, make_loader(test, 500, train=False), torch.device("cpu"))
    return {"name": "float (shipped)", "quant": "float", "test_top1": m["top1"], "test_top5": m["top5"],
            "bytes": float32_bytes(model), "wall_s": time.perf_counter() - t0}


def _packed_bytes(run_dir: str) -> int:
    from ..export import save_packed
    from ..runs import load_run

    run = load_run(run_dir)
    return save_packed(run.model, Path(run_dir) / "model.nuq.safetensors", meta=run.meta())["bytes"]


def run_demo(out_dir: str = "runs/demo", data_dir: str | None = None, quick: bool = False,
             methods: list[str] | None = None, overrides: list[str] | None = None,
             from_scratch: bool = False) -> list[dict]:
    """``overrides``: ``key=value`` strings applied to every run of the demo (e.g.
    ``train.compile=true``)."""
    from ..runs.checkpoint import CHECKPOINT
    from ..train import train

    methods = list(methods or [m for m in DEFAULT_METHODS if m in available_quantizers()])
    overrides = list(overrides or [])
    rows = []
    init_from = PREFIX + DATASET
    if from_scratch:
        cfg = config_from_dict(apply_overrides(float_config(out_dir, data_dir, quick), overrides))
        t0 = time.perf_counter()
        final = train(cfg)
        ck = Path(cfg.out_dir) / CHECKPOINT
        rows.append({**final, "bytes": None, "wall_s": time.perf_counter() - t0})
        init_from = str(ck.parent)
    else:
        rows.append(_shipped_float_row(data_dir, 500 if quick else None))
    for raw in demo_configs(out_dir, data_dir, quick, methods, init_from):
        cfg = config_from_dict(apply_overrides(raw, overrides))
        t0 = time.perf_counter()
        final = train(cfg)
        rows.append({**final, "wall_s": time.perf_counter() - t0, "bytes": _packed_bytes(cfg.out_dir)})
    print()
    print(format_table(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    base = rows[0]["test_top1"]
    lines = ["| run | quantization | test top-1 (%) | vs float | file (KiB) | time (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        delta = "" if i == 0 else f"{r['test_top1'] - base:+.2f}"
        size = "" if r.get("bytes") is None else f"{r['bytes'] / 1024:.0f}"
        lines.append(f"| {r['name']} | {r['quant']} | {r['test_top1']:.2f} | {delta} | {size} "
                     f"| {r['wall_s']:.0f} |")
    note = ("file: float32 state_dict for the float model, the packed low-bit file (nuq export) for the quantized "
            "ones; accuracy on the full 10k test set (500 images with --quick)")
    return "\n".join(lines) + "\n\n" + note


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--data-dir")
    p.add_argument("--quick", action="store_true", help="tiny subset, for smoke tests (results not meaningful)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the float model first (the shipped model's config: over an hour on 2 cores)")
    p.add_argument("--methods", nargs="+", default=None, help="QAT methods to compare (default: lsq nulsq)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a key of every demo run, e.g. train.compile=true (repeatable)")


def run(args: argparse.Namespace) -> int:
    run_demo(out_dir=args.out_dir, data_dir=args.data_dir, quick=args.quick, methods=args.methods,
             overrides=args.set, from_scratch=args.from_scratch)
    return 0
