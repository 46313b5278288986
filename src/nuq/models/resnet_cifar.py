"""CIFAR-style ResNets (He et al., 2016): 3 stages of n basic blocks at widths
w, 2w, 4w (w = 16), depth 6n+2. Post-activation (original) and pre-activation
(He et al., "Identity Mappings", 2016) variants; the shortcut across a change of shape
is a 1x1 convolution + BN (option B), the layer the papers keep at higher precision or
float in some tables (``QATConfig.quantize_downsample``).

``activation="prelu"|"rrelu"`` and ``learnable_bias=True`` give the block structure N2UQ
trains with (Sec. 4.1: a learnable per-channel bias and PReLU/RReLU in front of each
quantized convolution).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_model

ACTIVATIONS = ("relu", "prelu", "rrelu")


class LearnableBias(nn.Module):
    """x + b with a learned per-channel b (shifts the input of the next quantizer)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


def make_activation(kind: str, channels: int, learnable_bias: bool) -> nn.Module:
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation={kind!r}; allowed: {', '.join(ACTIVATIONS)}")
    act = {"relu": nn.ReLU, "prelu": lambda: nn.PReLU(channels), "rrelu": nn.RReLU}[kind]()
    return nn.Sequential(LearnableBias(channels), act) if learnable_bias else act


def _shortcut(cin: int, cout: int, stride: int, bn: bool) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str = "relu",
                 learnable_bias: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(activation, cout, learnable_bias)
        self.act2 = make_activation(activation, cout, learnable_bias)
        self.shortcut = _shortcut(cin, cout, stride, bn=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + (x if self.shortcut is None else self.shortcut(x)))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv, + shortcut taken from the activated input."""

    def __init__(self, cin: int, cout: int, stride: int, activation: str = "relu",
                 learnable_bias: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.act1 = make_activation(activation, cin, learnable_bias)
        self.act2 = make_activation(activation, cout, learnable_bias)
        self.shortcut = _shortcut(cin, cout, stride, bn=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.act1(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(a))


class CifarResNet(nn.Module):
    """A 3x3 stride-1 stem, then stages of ``n`` blocks at widths ``width * m`` for ``m`` in
    ``stages`` (the first block of each later stage has stride 2); ``depth`` = 6n+2 for the
    three-stage nets, or ``blocks=n`` directly (ResNet-18: four stages of two)."""

    def __init__(self, depth: int | None, num_classes: int, in_channels: int, width: int = 16,
                 preact: bool = False, activation: str = "relu", learnable_bias: bool = False,
                 stages: tuple[int, ...] = (1, 2, 4), blocks: int | None = None) -> None:
        super().__init__()
        if blocks is None and (depth is None or (depth - 2) % 6 != 0 or depth < 8):
            raise ValueError(f"depth={depth}; allowed: 6n+2 with n >= 1 (20, 32, 44, 56, 110)")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r}; allowed: a positive int")
        n = blocks if blocks is not None else (depth - 2) // 6
        block = PreActBlock if preact else BasicBlock
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, cout in enumerate(width * m for m in stages):
            for j in range(n):
                layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1, activation, learnable_bias))
                cin = cout
        self.layers = nn.Sequential(*layers)
        # pre-activation nets end with BN-ReLU before pooling
        self.bn_final = nn.BatchNorm2d(cin) if preact else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.layers(x if self.preact else self.relu(self.bn1(x)))
        x = self.relu(self.bn_final(x))
        return self.fc(self.pool(x).flatten(1))


def _factory(depth: int, preact: bool):
    def make(num_classes: int = 10, in_channels: int = 3, width: int = 16, activation: str = "relu",
             learnable_bias: bool = False) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, width=width, preact=preact, activation=activation,
                           learnable_bias=learnable_bias)

    make.__doc__ = f"{'Pre-activation ' if preact else ''}CIFAR ResNet-{depth}."
    return make


for _d in (20, 32, 56):
    register_model(f"resnet{_d}")(_factory(_d, False))
    register_model(f"preact_resnet{_d}")(_factory(_d, True))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    """Pre-activation ResNet-18 with a CIFAR stem (3x3 stride 1, no max-pool): four stages of
    two blocks at widths ``width`` x (1, 2, 4, 8)."""
    return CifarResNet(None, num_classes, in_channels, width=width, preact=True, stages=(1, 2, 4, 8), blocks=2)
