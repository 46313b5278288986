"""``nuq`` command line: train, eval, demo, list.

    nuq train --config configs/fmnist_resnet20_w2a2_lsq.yaml [--set optim.lr=0.01 ...]
    nuq eval runs/NAME
    nuq demo
    nuq compare --config configs/compare/fmnist_nulsq_vs_lsq.yaml
    nuq export runs/NAME --format packed|onnx [--out PATH]
    nuq list
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import load_config, train

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


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval_run import evaluate_run

    m = evaluate_run(args.run_dir, data_dir=args.data_dir, device=args.device)
    print(f"{args.run_dir}: {m['quant']} test top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f} "
          f"({m['samples']} samples)")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze_run import analyze_run, format_analysis

    print(format_analysis(analyze_run(args.run_dir, data_dir=args.data_dir)))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out_dir, data_dir=args.data_dir, quick=args.quick, methods=args.methods,
             overrides=args.set)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import load_grid, markdown_table, run_grid

    rows = run_grid(load_grid(args.config, args.set))
    print()
    print(markdown_table(rows))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.run import export_run

    r = export_run(args.run_dir, args.format, out=args.out, data_dir=args.data_dir, image_size=args.image_size)
    print(f"{r['path']}: {args.format} {r['bytes']} bytes vs float32 {r['float32_bytes']} bytes "
          f"({r['ratio']:.2f}x smaller)")
    if "max_abs_diff" in r:
        print(f"ONNX Runtime vs PyTorch on the example batch: max abs difference {r['max_abs_diff']:.3g}")
    return 0


def _cmd_list(_args: argparse.Namespace) -> int:
    from . import available_models, available_quantizers
    from .data import available_datasets

    print("quantizers:", ", ".join(available_quantizers()))
    print("models:    ", ", ".join(available_models()))
    print("datasets:  ", ", ".join(available_datasets()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nuq", description="Quantization-aware training with learned quantizers.")
    p.add_argument("--version", action="version", version=f"nuq {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a float model or run QAT from a YAML config")
    t.add_argument("--config", "-c", help="YAML config (see configs/)")
    t.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--data-dir", help="dataset directory (data.data_dir)")
    t.add_argument("--init-from", help="run directory to start from: float run, or higher-bit run (progressive)")
    t.add_argument("--out-dir", help="run directory (out_dir)")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a run directory on its test set")
    e.add_argument("run_dir")
    e.add_argument("--data-dir")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=_cmd_eval)

    a = sub.add_parser("analyze", help="size, FixOPs/BitOPs, entropy, quantization error and plots of a run")
    a.add_argument("run_dir")
    a.add_argument("--data-dir")
    a.set_defaults(fn=_cmd_analyze)

    d = sub.add_parser("demo", help="short real run: float ResNet-20 on Fashion-MNIST, then W2A2 QAT; prints a table")
    d.add_argument("--out-dir", default="runs/demo")
    d.add_argument("--data-dir")
    d.add_argument("--quick", action="store_true", help="tiny subset, for smoke tests (results not meaningful)")
    d.add_argument("--methods", nargs="+", default=None, help="QAT methods to compare (default: lsq nulsq)")
    d.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a key of every demo run, e.g. train.compile=true (repeatable)")
    d.set_defaults(fn=_cmd_demo)

    c = sub.add_parser("compare", help="grid of methods x bits x seeds from one float run; results table")
    c.add_argument("--config", "-c", required=True, help="grid YAML (see configs/compare/)")
    c.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a grid key (repeatable)")
    c.set_defaults(fn=_cmd_compare)

    x = sub.add_parser("export", help="write a run's quantized model as a packed low-bit file or ONNX")
    x.add_argument("run_dir")
    x.add_argument("--format", "-f", choices=("packed", "onnx"), default="packed")
    x.add_argument("--out", "-o", help="output file (default: RUN_DIR/model.nuqpack or RUN_DIR/model.onnx)")
    x.add_argument("--data-dir", help="dataset directory, for the ONNX example batch")
    x.add_argument("--image-size", type=int, help="ONNX: trace with noise of this size instead of test images")
    x.set_defaults(fn=_cmd_export)

    sub.add_parser("list", help="registered quantizers, models and datasets").set_defaults(fn=_cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"nuq {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
