"""Shannon entropy of quantized weights and activations, per layer.

The nuLSQ poster compares how evenly each method uses its levels: the entropy
H = -sum_i p_i log2 p_i of the code histogram, at most b bits for a b-bit quantizer.
Weights are encoded directly; activations are encoded from the inputs each quantized
layer sees on a few batches (eval mode, nothing updated).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..nn.walk import quant_layers
from .hooks import visit_layer_inputs


def code_entropy(codes: Tensor, num_levels: int) -> float:
    """Entropy in bits of the empirical distribution of integer codes."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=num_levels).double()
    p = counts / counts.sum().clamp_min(1)
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def layer_entropies(model: nn.Module, batches: Iterable[Tensor] | None = None,
                    max_batches: int = 4) -> list[dict[str, float | str | int]]:
    """Per quantized layer: bits and entropy of weight codes and (with ``batches``)
    of activation codes."""
    rows: dict[str, dict] = {}
    for name, layer in quant_layers(model):
        row: dict = {"layer": name}
        wq = layer.weight_quantizer
        if wq is not None:
            w = layer.float_weight()
            row.update(w_method=wq.method, w_bits=wq.bits,
                       w_entropy=code_entropy(wq.encode(w), wq.levels().shape[-1]))
        rows[name] = row
    if batches is not None:
        codes: dict[str, list[Tensor]] = {}
        visit_layer_inputs(model, batches, max_batches, lambda name, layer, x: codes.setdefault(name, []).append(
            layer.act_quantizer.encode(x).reshape(-1).cpu()))
        for name, cs in codes.items():
            aq = dict(quant_layers(model))[name].act_quantizer
            rows[name].update(a_method=aq.method, a_bits=aq.bits,
                              a_entropy=code_entropy(torch.cat(cs), aq.levels().shape[-1]))
    return list(rows.values())
