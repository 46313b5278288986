"""Time of one training step of ResNet-20 (or ``--model mobilenetv2``; batch 128,
Fashion-MNIST size 1x28x28), float and W2A2 QAT, under every execution setting of ``train:`` (fp32/bf16, eager/compiled,
channels_last; ``bf16-cl-qcompile``: ``compile: quantizers``, its ratio to the eager
bf16-cl float step), measured in one interleaved run at the machine's default thread count.

Each candidate is warmed up (compiled ones until their compile is done, whose time is
printed), then the candidates take turns, one step each per round, and the median of the
rounds is kept, so drift on a shared machine hits every candidate alike. Ratios are given to
the float step of the same setting and to the fp32 eager float step.

    python bench/train_step.py [--methods lsq nulsq apot n2uq lcq] [--settings fp32 bf16-cl-compile]
    python bench/train_step.py --model mobilenetv2 --width 0.5 --methods lsq
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from timing import interleaved_medians

import nuq
from nuq.train import execution as ex

#: weight quantizer of each method where the paper pairs it with another one (N2UQ: F_Q)
WEIGHT_OF = {"n2uq": "n2uq_w"}

SETTINGS = {
    "fp32": ex.TrainConfig(),
    "fp32-compile": ex.TrainConfig(compile=True),
    "bf16": ex.TrainConfig(precision="bf16"),
    "bf16-cl": ex.TrainConfig(precision="bf16", channels_last=True),
    "bf16-cl-compile": ex.TrainConfig(precision="bf16", channels_last=True, compile=True),
    # train.compile: quantizers -- each quantizer module compiled, convolutions and BatchNorms eager
    "bf16-cl-qcompile": ex.TrainConfig(precision="bf16", channels_last=True, compile="quantizers"),
}
#: settings whose float model is the eager one (it has no quantizers to compile)
QUANTIZERS_ONLY = {"bf16-cl-qcompile"}


def make_step(model, tc: ex.TrainConfig, x, y, dev: torch.device):
    model = ex.to_memory_format(model.to(dev), tc)
    run = ex.maybe_compile(model, tc, fresh=False)  # every candidate stays compiled side by side
    x = ex.input_format(x, tc)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with ex.autocast(tc, dev):
            loss = torch.nn.functional.cross_entropy(run(x).float(), y)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=["lsq", "nulsq", "apot", "n2uq", "lcq"])
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "mobilenetv2"])
    ap.add_argument("--width", type=float, default=None,
                    help="channels of the first stage (resnet20, default 16) or width multiplier "
                         "(mobilenetv2, default 0.5)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    # each compiled candidate recompiles the shared layer and quantizer code once
    torch._dynamo.config.recompile_limit = 64
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    width = args.width or {"resnet20": 16, "mobilenetv2": 0.5}[args.model]
    if args.model == "resnet20":
        width = int(width)
    model = nuq.create_model(args.model, num_classes=10, in_channels=1, width=width).to(dev)
    models = {"float": model}
    for m in args.methods:
        cfg = nuq.QATConfig(weight=WEIGHT_OF.get(m, m), act=m, w_bits=2, a_bits=2)
        models[m] = nuq.prepare(model, cfg, calib=[x])
    steps, warm = {}, {}
    for s in args.settings:
        for name, mdl in models.items():
            if s in QUANTIZERS_ONLY and name == "float":
                continue
            fn = make_step(copy.deepcopy(mdl), SETTINGS[s], x, y, dev)
            t = time.perf_counter()
            for _ in range(3):
                fn()
            warm[(name, s)] = time.perf_counter() - t
            steps[(name, s)] = fn
    med = interleaved_medians(steps, args.rounds)
    base = med[("float", "fp32")] if ("float", "fp32") in med else None
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.model} width {width}, batch {args.batch}, {where}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'model':8s} {'setting':16s} {'ms':>8s} {'/float same':>11s} {'/fp32 float':>11s} {'warm-up s':>9s}")
    for (name, s), t in med.items():
        same = t / med[("float", s if s not in QUANTIZERS_ONLY else "bf16-cl")]
        rel = f"{t / base:11.2f}" if base else f"{'-':>11s}"
        print(f"{name:8s} {s:16s} {t * 1e3:8.1f} {same:11.2f} {rel} {warm[(name, s)]:9.1f}")


if __name__ == "__main__":
    main()
