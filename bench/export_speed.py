"""ONNX Runtime latency of exported quantized models against the same model's float export.

The shipped float ResNet-20 (or ``--model mobilenetv2``; Fashion-MNIST) is prepared with each
method at W2A2 and W4A4 (8-bit first/last layers, calibrated on 256 test images; no
training: the graph, not the accuracy, sets the latency; nuLSQ's and LCQ's learned
levels spread 0.7-1.3x, since their initial levels are a uniform grid), exported with
``to_onnx``, and every session runs in one interleaved loop at batch 1 and 64 with ONNX
Runtime's default optimisations and ``--threads`` intra-op threads (default 2, the
machine's default; thread spinning off, so that one session's idle workers do not slow
the next). Printed: median latency
of the float model, each quantized model as a ratio to it (rows marked "fast": exported
with ``exact=False``), the ONNX and packed file sizes,
and, on the full Fashion-MNIST test set, the largest logit difference between ONNX Runtime
and PyTorch and their top-1 agreement.

    python bench/export_speed.py [--model mobilenetv2] [--methods lsq nulsq ...] [--bits 2 4] [--rounds 30]
                                 [--profile lsq]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from timing import interleaved_medians

import nuq
from nuq.data import load_dataset
from nuq.export import save_packed, to_onnx

WEIGHT_OF = {"n2uq": "n2uq_w"}
#: methods whose levels training makes non-uniform but whose initialisation is a uniform
#: grid (equal steps): their parameters are spread by 0.7-1.3x, as after training, so that
#: the graph is the one a trained model exports
LEARNED_LEVELS = ("nulsq", "lcq")
METHODS = ["lsq", "pact", "dorefa", "uniform", "apot", "pot", "n2uq", "nulsq", "lcq", "lloyd"]


def session(data: bytes, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # worker threads that spin after a run would steal the cores from the next session of
    # the interleaved loop (batch-1 ratios of 30-60x, none of it the model's own cost)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def onnx_bytes(model: torch.nn.Module, x: torch.Tensor, exact: bool = True) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        if any(True for _ in nuq.quant_layers(model)):
            to_onnx(model, x, Path(tmp) / "m.onnx", exact=exact)
        else:
            torch.onnx.export(model.eval(), (x,), Path(tmp) / "m.onnx", dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        return (Path(tmp) / "m.onnx").read_bytes()


def op_profile(data: bytes, x, threads: int, runs: int = 20) -> list[tuple[str, float]]:
    """Share of node time per ONNX op type over ``runs`` runs."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(data, threads, profile=os.path.join(tmp, "p"))
        for _ in range(runs):
            sess.run(None, {"input": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["args"]["op_name"]] += e["dur"]
    total = sum(per.values())
    return [(k, v / total) for k, v in per.most_common()]


@torch.no_grad()
def agree(model: torch.nn.Module, data: bytes, x: torch.Tensor, threads: int) -> tuple[float, float]:
    """(max |logit difference|, top-1 agreement in %) of ONNX Runtime against PyTorch on ``x``."""
    sess = session(data, threads)
    got = torch.cat([torch.from_numpy(sess.run(None, {"input": b.numpy()})[0]) for b in x.split(1000)])
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x.split(1000)])
    return float((got - ref).abs().max()), 100.0 * float((got.argmax(1) == ref.argmax(1)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--bits", nargs="*", type=int, default=[2, 4])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 64])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--inexact", nargs="*", default=["lsq", "n2uq", "nulsq"],
                    help="methods also exported with exact=False (rows 'METHOD-wXaX fast')")
    ap.add_argument("--profile", nargs="*", default=[], help="print the op-type time shares of these candidates")
    ap.add_argument("--agree-images", type=int, default=None,
                    help="test images for the agreement columns (default: all 10k)")
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "mobilenetv2"],
                    help="which shipped float model to quantize (MobileNetV2: width 0.5)")
    args = ap.parse_args()
    test = load_dataset("fashion_mnist", None, train=False)
    images = test.normalize(test.images[:256])
    model = nuq.create_model(args.model, num_classes=10, in_channels=1, pretrained="fashion_mnist").eval()
    files = {"float": onnx_bytes(model, images[:8])}
    packed, agreement = {}, {}
    full = test.normalize(test.images[: args.agree_images])
    for bits in args.bits:
        for m in args.methods:
            cfg = nuq.QATConfig(weight=WEIGHT_OF.get(m, m), act=m, w_bits=bits, a_bits=bits)
            q = nuq.prepare(model, cfg, calib=[images]).eval()
            if m in LEARNED_LEVELS:
                with torch.no_grad():
                    for _, qz in nuq.named_quantizers(q):
                        for p in qz.parameters():
                            p.mul_(torch.linspace(0.7, 1.3, p.numel()).view(p.shape))
            name = f"{m}-w{bits}a{bits}"
            files[name] = onnx_bytes(q, images[:8])
            agreement[name] = agree(q, files[name], full, args.threads)
            with tempfile.TemporaryDirectory() as tmp:
                packed[name] = save_packed(q, Path(tmp) / "m.nuq.safetensors")["bytes"]
            if m in args.inexact:
                files[name + " fast"] = onnx_bytes(q, images[:8], exact=False)
                agreement[name + " fast"] = agree(q, files[name + " fast"], full, args.threads)
                packed[name + " fast"] = packed[name]
    shown = {"resnet20": "ResNet-20 width 16", "mobilenetv2": "MobileNetV2 width 0.5"}[args.model]
    print(f"ONNX Runtime {ort.__version__}, {args.threads} intra-op threads, {shown}, 1x28x28; "
          f"median of {args.rounds} interleaved rounds")
    results = {}
    for b in args.batches:
        x = images[:b].numpy() if b <= len(images) else images.repeat(b // len(images) + 1, 1, 1, 1)[:b].numpy()
        sessions = {k: session(v, args.threads) for k, v in files.items()}
        fns = {k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
        for fn in fns.values():
            for _ in range(3):
                fn()
        results[b] = interleaved_medians(fns, args.rounds)
        for k in args.profile:
            shares = op_profile(files[k], x, args.threads)
            print(f"batch {b}, {k}: " + ", ".join(f"{op} {s:.0%}" for op, s in shares[:8]))
    head = " | ".join(f"batch {b}" for b in args.batches)
    print(f"\n| model | {head} | ONNX KiB | packed KiB | max logit diff | top-1 agreement % |")
    print("|---|" + "---:|" * (len(args.batches) + 4))
    cells = " | ".join(f"{results[b]['float'] * 1e3:.2f} ms" for b in args.batches)
    print(f"| float | {cells} | {len(files['float']) / 1024:.0f} | | | |")
    for k in files:
        if k == "float":
            continue
        cells = " | ".join(f"{results[b][k] / results[b]['float']:.2f}x" for b in args.batches)
        diff, top1 = agreement[k]
        print(f"| {k} | {cells} | {len(files[k]) / 1024:.0f} | {packed[k] / 1024:.0f} | {diff:.3g} | {top1:.2f} |")


if __name__ == "__main__":
    main()
