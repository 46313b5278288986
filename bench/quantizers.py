"""Forward+backward time of every registered quantizer, as ratios to PyTorch's fused
learnable fake-quant op (torch._fake_quantize_learnable_per_tensor_affine) and to an
identity op (x * 1), measured in one run on the same tensor, interleaved (best of --reps rounds).

Runs at the machine's default thread count; ``--threads 1`` gives the single-thread
figures, ``--compiled`` adds a column with each quantizer compiled (torch.compile, fullgraph)
against the same eager fused op.

    python bench/quantizers.py [--methods lsq nulsq] [--bits 2 3 4] [--shape 32 64 56 56] [--compiled]
"""

from __future__ import annotations

import argparse
import time

import torch

import nuq


def best_times(fns: dict[str, object], reps: int, sync=lambda: None) -> dict[str, float]:
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
            sync()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--bits", nargs="*", type=int, default=[2, 3, 4])
    ap.add_argument("--shape", nargs="*", type=int, default=[32, 64, 56, 56])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="default: the machine's default thread count")
    ap.add_argument("--compiled", action="store_true", help="also time each quantizer under torch.compile")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    methods = args.methods or nuq.available_quantizers()
    torch.manual_seed(0)
    base = torch.randn(*args.shape, device=dev)
    g = torch.randn(*args.shape, device=dev)
    print(f"tensor {tuple(args.shape)}, {args.device}, {torch.get_num_threads()} threads; best of {args.reps}")
    extra = f" {'compiled':>8s} {'/fused':>7s}" if args.compiled else ""
    print(f"{'method':8s} {'bits':>4s} {'signed':>6s} {'ms':>8s} {'/fused':>7s} {'/x*1':>6s}{extra}")
    for bits in args.bits:
        for signed in (False, True):
            x = (base if signed else base.relu()).clone().requires_grad_()
            scale = torch.tensor([0.1], requires_grad=True, device=dev)
            zp = torch.tensor([0.0], device=dev)
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
                q = nuq.make_quantizer(name, bits=bits, signed=signed).to(dev)
                q.initialize(x.detach(), method=q.init_methods[0])
                fns[name] = lambda q=q: q(x).backward(g)
                if args.compiled:
                    cq = torch.compile(q, fullgraph=True)
                    fns[name + "@c"] = lambda cq=cq: cq(x).backward(g)
            best = best_times(fns, args.reps, sync)
            for name in fns:
                if name in ("fused", "x*1") or name.endswith("@c"):
                    continue
                t, tf, ti = best[name], best["fused"], best["x*1"]
                line = f"{name:8s} {bits:4d} {signed!s:>6s} {t * 1e3:8.1f} {t / tf:7.2f} {t / ti:6.2f}"
                if args.compiled:
                    tc = best[name + "@c"]
                    line += f" {tc * 1e3:8.1f} {tc / tf:7.2f}"
                print(line)


if __name__ == "__main__":
    main()
