"""prepare() beyond our ResNets: a depthwise-separable (MobileNet-style) net always, and
torchvision / timm architectures where those packages are installed."""

import pytest
import torch
from torch import nn

import nuq
from nuq.nn import QuantConv2d, QuantLinear


class DepthwiseNet(nn.Module):
    """Stem conv, inverted-residual-like blocks with depthwise (groups = channels) 3x3
    convs and ReLU6, a pooled Dropout + Linear classifier -- MobileNetV2's layer types."""

    def __init__(self, in_channels=3, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6())
        blocks = []
        for _ in range(2):
            blocks += [nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU6(),
                       nn.Conv2d(2 * width, 2 * width, 3, 1, 1, groups=2 * width, bias=False),
                       nn.BatchNorm2d(2 * width), nn.ReLU6(),
                       nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width)]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, num_classes))

    def forward(self, x):
        x = self.features(self.stem(x))
        return self.classifier(x.mean((2, 3)))


def check_prepared(model, x, first, last, methods=(("lsq", "lsq"), ("nulsq", "nulsq"), ("apot", "apot"))):
    """prepare + forward + backward for each method; first/last layers at 8 bits; eval runs."""
    for w, a in methods:
        q = nuq.prepare(model, nuq.QATConfig(weight=w, act=a, w_bits=2, a_bits=2), calib=[x])
        layers = dict(nuq.quant_layers(q))
        assert all(type(m) in (QuantConv2d, QuantLinear) for m in layers.values())
        for name in (first, last):
            assert layers[name].weight_quantizer.method == "minmax" and layers[name].weight_quantizer.bits == 8
        inner = [m for n, m in layers.items() if n not in (first, last)]
        assert inner and all(m.weight_quantizer.method == w and m.weight_quantizer.bits == 2 for m in inner)
        out = q.train()(x)
        out.square().mean().backward()
        assert all(p.grad is not None for _, qz in nuq.named_quantizers(q) for p in qz.parameters()
                   if p.requires_grad and qz.method == w)
        with torch.no_grad():
            assert torch.isfinite(q.eval()(x)).all()
    return q


def test_depthwise_separable_net():
    x = torch.randn(8, 3, 32, 32)
    q = check_prepared(DepthwiseNet(), x, "stem.0", "classifier.1")
    dw = q.features[3]
    assert isinstance(dw, QuantConv2d) and dw.groups == dw.in_channels == 16


def test_depthwise_net_exports_to_integer_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from nuq.export import to_onnx

    x = torch.randn(8, 3, 32, 32)
    q = nuq.prepare(DepthwiseNet(), nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2), calib=[x])
    info = to_onnx(q, x, tmp_path / "dw.onnx", verify=True)
    assert all(v["act"].startswith("integer-") for v in info["layers"].values())  # grouped ConvInteger too
    assert info["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("arch,first,last", [("resnet18", "conv1", "fc"), ("resnet50", "conv1", "fc"),
                                             ("mobilenet_v2", "features.0.0", "classifier.1")])
def test_torchvision(arch, first, last):
    pytest.importorskip("torchvision")
    model = nuq.create_model(f"torchvision.{arch}", num_classes=10)
    check_prepared(model, torch.randn(2, 3, 64, 64), first, last, methods=(("lsq", "lsq"),))
    one = nuq.create_model(f"torchvision.{arch}", num_classes=10, in_channels=1)
    assert one(torch.randn(2, 1, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("arch,first,last", [("convnext_atto", "stem.0", "head.fc"),
                                             ("swin_tiny_patch4_window7_224", "patch_embed.proj", "head.fc")])
def test_timm(arch, first, last):
    pytest.importorskip("timm")
    model = nuq.create_model(f"timm.{arch}", num_classes=10)
    size = 224 if "swin" in arch else 64
    check_prepared(model, torch.randn(2, 3, size, size), first, last, methods=(("lsq", "lsq"),))


def test_missing_library_is_a_clear_error():
    for lib, extra in (("torchvision", "vision"), ("timm", "timm")):
        try:
            __import__(lib)
        except ImportError:
            with pytest.raises(ValueError, match=rf"pip install 'nuq\[{extra}\]'"):
                nuq.create_model(f"{lib}.resnet18")
