"""Run a few batches through a prepared model (eval mode, no grad) and hand each
activation-quantized layer's input to a callback."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..nn.walk import quant_layers


@torch.no_grad()
def visit_layer_inputs(model: nn.Module, batches: Iterable, max_batches: int,
                       fn: Callable[[str, nn.Module, Tensor], None]) -> None:
    """Call ``fn(name, layer, input)`` for every quantized layer with an activation
    quantizer, on each of the first ``max_batches`` batches (tensors or (x, y) pairs)."""
    handles = [layer.register_forward_pre_hook(lambda m, a, n=name: fn(n, m, a[0].detach()))
               for name, layer in quant_layers(model) if layer.act_quantizer is not None]
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for i, b in enumerate(batches):
            if i >= max_batches:
                break
            model((b[0] if isinstance(b, (tuple, list)) else b).to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
