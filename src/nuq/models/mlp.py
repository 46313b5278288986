"""A plain multilayer perceptron (flatten, Linear-ReLU blocks, Linear): the smallest
model family ``prepare`` must handle, and a fast one for tests."""

from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("mlp")
def mlp(num_classes: int = 10, in_channels: int = 1, image_size: int = 28, hidden: int = 256,
        depth: int = 2) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)
