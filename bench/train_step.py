"""Time of one W2A2 QAT training step of ResNet-20 relative to the float step (batch
128, Fashion-MNIST size 1x28x28), measured in one run.

    python bench/train_step.py [--method lsq] [--batch 128] [--width 16]
"""

from __future__ import annotations

import argparse
import time

import torch

import nuq


def step_time(model, x, y, reps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=args.width)
    t_float = step_time(model, x, y, args.reps)
    print(f"ResNet-20 width {args.width}, batch {args.batch}, {torch.get_num_threads()} threads; median of {args.reps}")
    print(f"float step {t_float * 1e3:.1f} ms")
    for m in args.methods or ["lsq"]:
        qm = nuq.prepare(model, nuq.QATConfig(weight=m, act=m, w_bits=2, a_bits=2), calib=[x])
        t = step_time(qm, x, y, args.reps)
        print(f"{m:8s} W2A2 step {t * 1e3:.1f} ms  ratio to float {t / t_float:.2f}x")


if __name__ == "__main__":
    main()
