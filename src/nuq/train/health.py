"""A check on a QAT run's first step: quantized layers whose output no longer depends on the
input.

At 2 bits an untrained start can lose the signal on the way through a deep net (seen with
torchvision MobileNetV2 and EfficientNet-B0 at W2A2: every activation quantizer rounds to
the same level, the logits are constant, the loss stays at ln(classes) and nothing else
says why). :func:`constant_layers` runs one batch through the model with hooks on the
quantized layers and names those whose output is the same for every input of the batch.
It leaves no trace: buffers (BatchNorm statistics, observers) and the RNG are restored.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn.walk import quant_layers


@torch.no_grad()
def constant_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the quantized layers whose output on batch ``x`` (at least two inputs) is
    the same for every input (to 1e-6 of its largest value), in module order."""
    if x.shape[0] < 2:
        return []
    same: dict[str, bool] = {}

    def record(name: str):
        def hook(_module, _inputs, out):
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                o = out.detach().float()
                # spread across the batch within float32 noise of the values themselves
                same[name] = bool((o - o[:1]).abs().amax() <= 1e-6 * o.abs().amax())
        return hook

    layers = list(quant_layers(model))
    if not layers:
        return []
    hooks = [layer.register_forward_hook(record(name)) for name, layer in layers]
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for b, v in saved:
            b.copy_(v)
    return [name for name, _ in layers if same.get(name)]


def constant_output_message(names: list[str]) -> str:
    shown = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
    return (f"quantized layer(s) {shown} output the same values for every input of the batch: the signal is "
            "lost before them and the network cannot learn from it. Start from trained float weights "
            "(init_from), or keep those layers at higher precision (QATConfig.skip or more bits)")
