"""Figures users of these papers look at, written as PNG files (matplotlib, Agg).

* accuracy vs bits, one line per method (``nuq compare``);
* training curves of runs;
* per layer: the learned transfer function of the activation quantizer over a
  histogram of its input, and the weight histogram with the weight levels marked;
* Shannon entropy of quantized weights/activations per layer per method.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ..nn.walk import quant_layers  # noqa: E402
from .hooks import visit_layer_inputs  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_bits(rows: list[dict], path: str | Path) -> Path:
    """rows: {method, bits, top1} (several seeds per cell are averaged, std as error bars)."""
    import statistics

    fig, ax = plt.subplots(figsize=(5.5, 4))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "float"))
    # more methods than the default ten colours: every method still gets its own colour and marker
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20").colors
    for i, m in enumerate(methods):
        bits = sorted({r["bits"] for r in rows if r["method"] == m})
        vals = [[r["top1"] for r in rows if r["method"] == m and r["bits"] == b] for b in bits]
        ax.errorbar(bits, [statistics.mean(v) for v in vals],
                    yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals], marker="osD^v<>P*Xph"[i % 12],
                    color=colours[i % len(colours)], capsize=3, label=m)
    ax.set_xticks(sorted({r["bits"] for r in rows if r["method"] != "float"}))
    fl = [r["top1"] for r in rows if r["method"] == "float"]
    if fl:
        ax.axhline(sum(fl) / len(fl), color="k", ls="--", lw=1, label="float")
    ax.set_xlabel("bits (W = A)")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: never over a point
    ax.grid(alpha=0.3)
    return _save(fig, path)


def training_curves(runs: Mapping[str, str | Path], path: str | Path) -> Path:
    """Test top-1 and train loss per epoch of each run directory (from metrics.json)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, d in runs.items():
        p = Path(d) / "metrics.json"
        if not p.is_file():
            continue
        hist = json.loads(p.read_text())["history"]
        ep = [h["epoch"] for h in hist]
        a1.plot(ep, [h["test_top1"] for h in hist], marker=".", label=label)
        a2.plot(ep, [h["train_loss"] for h in hist], marker=".", label=label)
    a1.set_xlabel("epoch")
    a1.set_ylabel("test top-1 (%)")
    a2.set_xlabel("epoch")
    a2.set_ylabel("train loss")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    a1.legend(fontsize=7)
    return _save(fig, path)


#: elements of each layer input drawn per batch for the histograms
SAMPLE = 20000


def uniform_sample(x: Tensor, n: int = SAMPLE, seed: int = 0) -> Tensor:
    """``n`` elements drawn uniformly over the whole tensor (all images, channels and
    positions; a fixed generator), not its first ``n``: those are a few channels of one image."""
    flat = x.reshape(-1)
    if flat.numel() <= n:
        return flat.cpu()
    g = torch.Generator().manual_seed(seed)
    return flat[torch.randint(flat.numel(), (n,), generator=g).to(flat.device)].cpu()


def _layer_inputs(model: nn.Module, batches: Iterable[Tensor], max_batches: int) -> dict[str, Tensor]:
    seen: dict[str, list[Tensor]] = {}
    visit_layer_inputs(model, batches, max_batches,
                       lambda name, _layer, x: seen.setdefault(name, []).append(uniform_sample(x)))
    return {n: torch.cat(v) for n, v in seen.items()}


@torch.no_grad()
def quantizer_panels(model: nn.Module, batches: Iterable[Tensor], path: str | Path, max_layers: int = 6,
                     max_batches: int = 2) -> Path:
    """Per layer (up to ``max_layers``): activation transfer function over the input
    histogram, and the weight histogram with the weight levels marked."""
    inputs = _layer_inputs(model, batches, max_batches)
    layers = [(n, m) for n, m in quant_layers(model)][:max_layers]
    if not layers:
        raise ValueError("model has no quantized layer to plot (was it prepared?)")
    fig, axes = plt.subplots(len(layers), 2, figsize=(9, 2.4 * len(layers)), squeeze=False)
    for (name, layer), (ax_a, ax_w) in zip(layers, axes):
        aq, wq = layer.act_quantizer, layer.weight_quantizer
        if aq is not None and name in inputs:
            x = inputs[name].float()
            lo, hi = float(x.min()), float(x.max())
            ax_a.hist(x.numpy(), bins=100, color="0.8", density=True)
            grid = torch.linspace(lo, hi, 1000, device=x.device)
            ax2 = ax_a.twinx()
            ax2.plot(grid.numpy(), aq.eval()(grid.to(aq.initialized.device)).cpu().numpy(), color="C0")
            ax_a.set_title(f"{name} input: {aq.method} {aq.bits}b", fontsize=8)
        else:
            ax_a.set_axis_off()
        if wq is not None:
            w = layer.float_weight().detach().reshape(-1).cpu()
            ax_w.hist(w.numpy(), bins=100, color="0.7", density=True)
            lv = wq.levels().reshape(-1).cpu() if wq.levels().dim() == 1 else wq.levels()[0].cpu()
            for v in lv.tolist():
                ax_w.axvline(v, color="C3", lw=0.8)
            ax_w.set_title(f"{name} weight: {wq.method} {wq.bits}b (levels in red)", fontsize=8)
        else:
            ax_w.set_axis_off()
    return _save(fig, path)


def entropy_by_layer(entropies: Mapping[str, list[dict]], path: str | Path, key: str = "a_entropy") -> Path:
    """Bar chart of per-layer code entropy (``key``: a_entropy or w_entropy), one bar
    group per layer, one bar per method."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    methods = list(entropies)
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        rows = [r for r in entropies[m] if key in r]
        ax.bar([j + i * width for j in range(len(rows))], [r[key] for r in rows], width=width, label=m)
    ax.set_xlabel("quantized layer (input to output)")
    ax.set_ylabel(f"{key.replace('_', ' ')} (bits)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
