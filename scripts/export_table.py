"""Export every trained run of a compare grid (packed + ONNX) and print a markdown table:
file sizes, load_packed and ONNX Runtime agreement with PyTorch on real test images.

    python scripts/export_table.py runs/compare_all_methods --bits 2 --images 1000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from nuq.data import load_dataset
from nuq.export import load_packed, save_packed, to_onnx
from nuq.export.packed import float32_bytes
from nuq.runs.checkpoint import load_checkpoint, resolve_checkpoint
from nuq.runs.load import rebuild


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid_dir")
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    import onnxruntime as ort

    test = load_dataset("fashion_mnist", None, train=False)
    x = test.normalize(test.images[: args.images])
    print("| method | packed bytes | float32 bytes | ratio | load_packed max diff | ORT max diff "
          "| ORT images > 1e-4 | ORT top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in sorted(Path(args.grid_dir).glob(f"*_w{args.bits}a{args.bits}_s{args.seed}")):
        ck = load_checkpoint(resolve_checkpoint(run))
        model, _ = rebuild(ck, ck["num_classes"], ck["in_channels"])
        model.eval()
        with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
            ref = model(x)
            meta = {"model": ck["config"]["model"], "num_classes": ck["num_classes"], "in_channels": ck["in_channels"]}
            info = save_packed(model, Path(tmp) / "m.nuq.safetensors", meta=meta)
            pk = (load_packed(Path(tmp) / "m.nuq.safetensors")(x) - ref).abs().max().item()
            to_onnx(model, x[:8], Path(tmp) / "m.onnx")
            sess = ort.InferenceSession(str(Path(tmp) / "m.onnx"), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
        d = (got - ref).abs().amax(1)
        fb = float32_bytes(model)
        agree = (got.argmax(1) == ref.argmax(1)).sum().item()
        method = run.name.rsplit("_", 2)[0]
        print(f"| {method} | {info['bytes']:,} | {fb:,} | {fb / info['bytes']:.1f}x | {pk:.3g} | "
              f"{d.max().item():.3g} | {(d > 1e-4).sum().item()} / {len(d)} | {agree} / {len(d)} |")


if __name__ == "__main__":
    main()
