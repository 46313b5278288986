"""``nuq analyze RUN_DIR``: size, FixOPs/BitOPs, per-layer entropy and quantization
error (clipping vs projection, APoT Eq. 14) of a trained run, plus the quantizer plots.

Writes ``RUN_DIR/analysis/analysis.json`` and ``quantizers.png`` and returns the dict.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..nn.walk import quant_layers
from ..runs import architecture, load_run, qat_summary, write_json

NAME = "analyze"
HELP = "size, FixOPs/BitOPs, entropy, quantization error and plots of a run"


@torch.no_grad()
def analyze_run(run_dir: str, data_dir: str | None = None, batches: int = 2) -> dict[str, Any]:
    # imported here, not at parse time: matplotlib and the data loaders are not needed by `nuq --help`
    from ..analysis import plots
    from ..analysis.accounting import count_model, quantization_error
    from ..analysis.entropy import layer_entropies
    from ..analysis.hooks import visit_layer_inputs
    from ..data import load_dataset, make_loader

    run = load_run(run_dir)
    model, cfg, ckpt = run.model, run.config, run.checkpoint
    test = load_dataset(cfg.data.name, data_dir or cfg.data.data_dir, train=False,
                        image_size=cfg.data.image_size).subset(128 * batches, seed=0)
    loader = list(make_loader(test, 128, train=False, workers=cfg.data.workers))
    shape = (1, *loader[0][0].shape[1:])
    counts = count_model(model, shape)
    float_counts = count_model(architecture(cfg, ckpt["num_classes"], ckpt["in_channels"]), shape)
    ent = {r["layer"]: r for r in layer_entropies(model, loader)}
    inputs: dict[str, torch.Tensor] = {}
    visit_layer_inputs(model, loader, 1, lambda n, _m, x: inputs.setdefault(n, x))
    layers = []
    for name, m in quant_layers(model):
        row: dict[str, Any] = dict(ent.get(name, {"layer": name}))
        if m.weight_quantizer is not None:
            row["w_error"] = quantization_error(m.float_weight().detach(), m.weight_quantizer)
        if m.act_quantizer is not None and name in inputs:
            row["a_error"] = quantization_error(inputs[name], m.act_quantizer)
        layers.append(row)
    out = Path(run_dir) / "analysis"
    plots.quantizer_panels(model, loader, out / "quantizers.png")
    result = {"run": str(run_dir), "quant": qat_summary(cfg.qat), "counts": counts.as_dict(),
              "float_size_mb": float_counts.size_mb, "float_flops": float_counts.flops, "layers": layers,
              **_file_sizes(model)}
    write_json(result, out / "analysis.json")
    result["table"] = counts.table()
    return result


def _file_sizes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the real packed file of the model (written to a temporary directory) and of
    its float32 parameters and buffers."""
    from ..export.packed import float32_bytes, save_packed

    if not list(quant_layers(model)):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        packed = save_packed(model, Path(tmp) / "m.nuq.safetensors")["bytes"]
    return {"packed_bytes": packed, "float32_bytes": float32_bytes(model)}


def format_analysis(r: dict[str, Any]) -> str:
    c = r["counts"]
    files = []
    if "packed_bytes" in r:
        files = [f"packed file {r['packed_bytes']:,} bytes vs float32 {r['float32_bytes']:,} bytes "
                 f"({r['float32_bytes'] / r['packed_bytes']:.1f}x smaller; nuq export RUN writes it)"]
    lines = [r["table"], "", *files,
             f"{r['quant']}: size {c['size_mb']:.3f} MB (float32 {r['float_size_mb']:.3f} MB, "
             f"{r['float_size_mb'] / max(c['size_mb'], 1e-12):.1f}x smaller); "
             f"FixOPs {c['fixops'] / 1e6:.2f}M, BitOPs {c['bitops'] / 1e9:.3f}G, float FLOPs {c['flops'] / 1e6:.2f}M "
             f"(float model {r['float_flops'] / 1e6:.2f}M)", "",
             f"{'layer':28s} {'H(w)':>6s} {'H(a)':>6s} {'w clip':>9s} {'w proj':>9s} {'a clip':>9s} {'a proj':>9s}"]
    def cell(row: dict[str, Any], key: str, sub: str | None = None) -> str:
        v = row.get(key)
        if v is None:
            return f"{'-':>9s}" if sub else f"{'-':>6s}"
        return f"{v[sub]:9.2e}" if sub else f"{v:6.3f}"

    for row in r["layers"]:
        lines.append(f"{row['layer'][:28]:28s} {cell(row, 'w_entropy')} {cell(row, 'a_entropy')} "
                     f"{cell(row, 'w_error', 'clip')} {cell(row, 'w_error', 'proj')} "
                     f"{cell(row, 'a_error', 'clip')} {cell(row, 'a_error', 'proj')}")
    return "\n".join(lines) + "\n" + json.dumps({"written": str(Path(r["run"]) / "analysis")})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--data-dir")


def run(args: argparse.Namespace) -> int:
    print(format_analysis(analyze_run(args.run_dir, data_dir=args.data_dir)))
    return 0
