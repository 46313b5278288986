"""The same ResNet-20 W2A2 training step under nuq (LSQ) and under Brevitas (learned
per-tensor scales: weights and inputs of every convolution at 2 bits, initialised from
statistics and then trained as parameters), as ratios to the float step, in one
interleaved run at the machine's default thread count.

    pip install 'nuq[bench]'      # brevitas, an optional extra
    python bench/peers.py [--rounds 15] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
from timing import interleaved_medians
from torch import nn

import nuq


def brevitas_model(model: nn.Module, bits: int) -> nn.Module:
    """Every Conv2d of ``model`` replaced by a Brevitas QuantConv2d with learned-scale
    ``bits``-bit weights and inputs (signed inputs for the first layer, unsigned after ReLU)."""
    import brevitas.nn as qnn
    from brevitas.inject.enum import ScalingImplType
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    wq = Int8WeightPerTensorFloat.let(scaling_impl_type=ScalingImplType.PARAMETER_FROM_STATS)
    out = copy.deepcopy(model)
    first = True
    for mod in list(out.modules()):
        for child_name, child in list(mod.named_children()):
            if not isinstance(child, nn.Conv2d):
                continue
            aq = Int8ActPerTensorFloat if first else Uint8ActPerTensorFloat
            first = False
            q = qnn.QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, bias=child.bias is not None, weight_quant=wq,
                                weight_bit_width=bits, input_quant=aq, input_bit_width=bits)
            q.weight.data.copy_(child.weight.data)
            setattr(mod, child_name, q)
    return out


def make_step(model, x, y, compile_: bool):
    run = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(run(x), y).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--compile", action="store_true", help="also time nuq compiled (train.compile)")
    args = ap.parse_args()
    try:
        import brevitas
    except ImportError:
        sys.exit("bench/peers.py needs brevitas: pip install 'nuq[bench]'")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=args.width)
    cfg = nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2, first_last="same")
    cands = {
        "float": make_step(copy.deepcopy(model), x, y, False),
        "nuq lsq": make_step(nuq.prepare(model, cfg, calib=[x]), x, y, False),
        f"brevitas {brevitas.__version__}": make_step(brevitas_model(model, 2), x, y, False),
    }
    if args.compile:
        cands["float compiled"] = make_step(copy.deepcopy(model), x, y, True)
        cands["nuq lsq compiled"] = make_step(nuq.prepare(model, cfg, calib=[x]), x, y, True)
    for fn in cands.values():
        for _ in range(3):
            fn()
    med = interleaved_medians(cands, args.rounds)
    print(f"ResNet-20 width {args.width}, batch {args.batch}, W2A2 (every conv), {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    for k, t in med.items():
        print(f"{k:24s} {t * 1e3:8.1f} ms  {t / med['float']:5.2f}x float eager")


if __name__ == "__main__":
    main()
