"""``nuq`` command line: parsing and error reporting only; each subcommand lives in
:mod:`nuq.commands`.

    nuq train --config configs/fmnist_resnet20_w2a2_lsq.yaml [--set optim.lr=0.01 ...]
    nuq eval runs/NAME
    nuq analyze runs/NAME
    nuq demo
    nuq compare --config configs/compare/fmnist_nulsq_vs_lsq.yaml
    nuq export runs/NAME --format packed|onnx [--out PATH]
    nuq list
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands import command_modules


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nuq", description="Quantization-aware training with learned quantizers.")
    p.add_argument("--version", action="version", version=f"nuq {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in command_modules():
        cmd = sub.add_parser(mod.NAME, help=mod.HELP)
        mod.add_arguments(cmd)
        cmd.set_defaults(fn=mod.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError, RuntimeError) as e:
        # user input, files and diverged runs: one line, exit code 2; any other RuntimeError
        # is a bug and keeps its traceback (TrainingDiverged says the last good checkpoint)
        from .train.loop import TrainingDiverged

        if isinstance(e, RuntimeError) and not isinstance(e, TrainingDiverged):
            raise
        print(f"nuq {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nuq {args.command}: interrupted; a run resumes from its last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
