"""Forward+backward time of every registered quantizer, as ratios to PyTorch's fused
learnable fake-quant op (torch._fake_quantize_learnable_per_tensor_affine) and to an
identity op (x * 1), measured in one run on the same tensor, interleaved (best of --reps rounds).

    python bench/quantizers.py [--methods lsq nulsq] [--bits 2 3 4] [--shape 64 64 56 56]
"""

from __future__ import annotations

import argparse
import time

import torch

import nuq


def best_times(fns: dict[str, object], reps: int) -> dict[str, float]:
    """Best wall time of each function over ``reps`` rounds, the functions interleaved
    within a round, so that drift (frequency, page-cache state, a neighbour's load) hits
    every candidate alike."""
    for fn in fns.values():
        fn()
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
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

            fns = {"fused": fused, "x*1": ident}
            for name in methods:
                cls = nuq.quantizers.quantizer_class(name)
                if not cls.min_bits <= bits <= cls.max_bits:
                    continue
                q = nuq.make_quantizer(name, bits=bits, signed=signed)
                q.initialize(x.detach(), method=q.init_methods[0])
                fns[name] = lambda q=q: q(x).backward(g)
            best = best_times(fns, args.reps)
            for name in fns:
                if name in ("fused", "x*1"):
                    continue
                t, tf, ti = best[name], best["fused"], best["x*1"]
                print(f"{name:8s} {bits:4d} {signed!s:>6s} {t * 1e3:8.1f} {t / tf:7.2f} {t / ti:6.2f}")


if __name__ == "__main__":
    main()
