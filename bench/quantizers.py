"""Forward+backward time of every registered quantizer, as ratios to PyTorch's fused
learnable fake-quant op (torch._fake_quantize_learnable_per_tensor_affine) and to an
identity op (x * 1), measured in one run on the same tensor.

    python bench/quantizers.py [--methods lsq nulsq] [--bits 2 3 4] [--shape 64 64 56 56]
"""

from __future__ import annotations

import argparse
import time

import torch

import nuq


def timeit(fn, reps: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--bits", nargs="*", type=int, default=[2, 3, 4])
    ap.add_argument("--shape", nargs="*", type=int, default=[32, 64, 56, 56])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    methods = args.methods or nuq.available_quantizers()
    torch.manual_seed(0)
    base = torch.randn(*args.shape)
    g = torch.randn(*args.shape)
    print(f"tensor {tuple(args.shape)}, {torch.get_num_threads()} threads; times are best of {args.reps}")
    print(f"{'method':8s} {'bits':>4s} {'signed':>6s} {'ms':>8s} {'/fused':>7s} {'/x*1':>6s}")
    for bits in args.bits:
        for signed in (False, True):
            x = (base if signed else base.relu()).clone().requires_grad_()
            scale = torch.tensor([0.1], requires_grad=True)
            zp = torch.tensor([0.0])
            qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

            def fused():
                y = torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, 1.0)
                y.backward(g)

            def ident():
                (x * 1).backward(g)

            t_fused = timeit(fused, args.reps)
            t_id = timeit(ident, args.reps)
            for name in methods:
                cls = nuq.quantizers.quantizer_class(name)
                if not cls.min_bits <= bits <= cls.max_bits:
                    continue
                q = nuq.make_quantizer(name, bits=bits, signed=signed)
                q.initialize(x.detach(), method=q.init_methods[0])

                def run():
                    q(x).backward(g)

                t = timeit(run, args.reps)
                print(f"{name:8s} {bits:4d} {signed!s:>6s} {t * 1e3:8.1f} {t / t_fused:7.2f} {t / t_id:6.2f}")


if __name__ == "__main__":
    main()
