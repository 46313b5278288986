"""CIFAR-style MobileNetV2 (Sandler et al., 2018) for 28x28 / 32x32 inputs.

Inverted residual blocks: 1x1 expansion (factor t) - BN - ReLU6 - 3x3 depthwise - BN - ReLU6
- 1x1 linear projection - BN, with an identity shortcut when stride is 1 and the widths
match. The stage table is the paper's Table 2; for small inputs the stem convolution and the
second stage keep stride 1 (the common CIFAR adaptation), so a 28x28 input reaches 4x4 before
the last 1x1 convolution instead of 1x1. ``width`` multiplies every channel count, rounded to
a multiple of 8 as in the paper; the last convolution keeps 1280 channels for width <= 1.

Depthwise convolutions (``groups == channels``) are the hard case of 2-bit quantization:
each output channel sees only 9 weights.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model

#: (expansion t, output channels c, repeats n, stride s) of the paper's Table 2, with the
#: second stage's stride set to 1 for 28/32-pixel inputs
STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def _divisible(v: float, by: int = 8) -> int:
    """Round to the nearest multiple of ``by`` without going below 90% of ``v``."""
    r = max(by, int(v + by / 2) // by * by)
    return r + by if r < 0.9 * v else r


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = _conv_bn(cin, hidden, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += _conv_bn(hidden, cout, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ValueError(f"width={width!r}; allowed: a positive number (the channel multiplier)")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout!r}; allowed: 0 <= dropout < 1")
        cin = _divisible(32 * width)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(in_channels, cin, 3))]
        for t, c, n, s in STAGES:
            cout = _divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _divisible(1280 * max(1.0, width))
        layers.append(nn.Sequential(*_conv_bn(cin, last, 1)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """CIFAR-style MobileNetV2 with channel multiplier ``width``."""
    return MobileNetV2(num_classes, in_channels, width=width, dropout=dropout)
