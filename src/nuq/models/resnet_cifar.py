"""CIFAR-style ResNets (He et al., 2016): 3 stages of n basic blocks at widths
w, 2w, 4w (w = 16), depth 6n+2. Post-activation (original) and pre-activation
(He et al., "Identity Mappings", 2016) variants; the shortcut across a change of shape
is a 1x1 convolution + BN (option B), the layer the papers keep at higher precision or
float in some tables (``QATConfig.quantize_downsample``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


def _shortcut(cin: int, cout: int, stride: int, bn: bool) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, stride, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(cin, cout, stride, bn=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv, + shortcut taken from the activated input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(cin, cout, stride, bn=False)

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn1(x))
        out = self.conv1(a)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(a))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int = 16,
                 preact: bool = False) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth={depth}; allowed: 6n+2 with n >= 1 (20, 32, 44, 56, 110)")
        if width < 1:
            raise ValueError(f"width={width}; allowed: a positive int")
        n = (depth - 2) // 6
        block = PreActBlock if preact else BasicBlock
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
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
    def make(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels, width=width, preact=preact)

    make.__doc__ = f"{'Pre-activation ' if preact else ''}CIFAR ResNet-{depth}."
    return make


for _d in (20, 32, 56):
    register_model(f"resnet{_d}")(_factory(_d, False))
    register_model(f"preact_resnet{_d}")(_factory(_d, True))
