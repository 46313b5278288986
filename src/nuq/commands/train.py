"""``nuq train --config RUN.yaml``: one float or QAT run."""

from __future__ import annotations

import argparse
import os

NAME = "train"
HELP = "train a float model or run QAT from a YAML config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML config (see configs/; `nuq demo` runs without one)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--data-dir", help="dataset directory (data.data_dir)")
    p.add_argument("--init-from", help="run directory to start from: float run, or higher-bit run (progressive)")
    p.add_argument("--out-dir", help="run directory (out_dir)")


def run(args: argparse.Namespace) -> int:
    from ..runs.config import load_config
    from ..train import train

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.init_from:
        overrides.append(f"init_from={args.init_from}")
    if args.out_dir:
        overrides.append(f"out_dir={args.out_dir}")
    cfg = load_config(args.config, overrides)
    final = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # one line per job, not per torchrun process
        print(f"{final['name']}: {final['quant']} test top-1 {final['test_top1']:.2f}% "
              f"(top-5 {final['test_top5']:.2f}%) -> {cfg.out_dir}")
    return 0
