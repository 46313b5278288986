"""Every registered model builds, runs forward/backward, and survives prepare()."""

import pytest
import torch

import nuq

MODELS = [m for m in nuq.available_models() if not m.startswith("test_")]  # not models other tests register


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward_and_prepare(name):
    kw = {"width": 4} if "resnet" in name else {"width": 0.25} if name == "mobilenetv2" else {"hidden": 16}
    model = nuq.create_model(name, num_classes=7, in_channels=1, **kw)
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 7)
    q = nuq.prepare(model, nuq.QATConfig(w_bits=2, a_bits=2), calib=[x])
    q(x).sum().backward()


@pytest.mark.parametrize("activation", ["prelu", "rrelu"])
def test_n2uq_block_structure(activation):
    model = nuq.create_model("preact_resnet20", in_channels=1, width=4, activation=activation, learnable_bias=True)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.endswith("act1.0.bias") for n in names)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        nuq.create_model("resnet999")
    with pytest.raises(ValueError, match="takes no argument"):
        nuq.create_model("resnet20", depth=3)
    with pytest.raises(ValueError, match="activation"):
        nuq.create_model("resnet20", activation="gelu")
    with pytest.raises(ValueError, match="num_classes"):
        nuq.create_model("resnet20", num_classes=0)


def test_mobilenetv2_structure():
    """Table 2's 17 inverted residual blocks with CIFAR strides: 28x28 reaches 4x4, every
    block has one depthwise 3x3 convolution, residuals where shape allows (10 of them)."""
    from nuq.models.mobilenetv2 import InvertedResidual

    m = nuq.create_model("mobilenetv2", num_classes=10, in_channels=1, width=0.5)
    blocks = [b for b in m.modules() if isinstance(b, InvertedResidual)]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    dw = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]
    assert len(dw) == 17 and all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in dw)
    assert m.features(torch.randn(2, 1, 28, 28)).shape == (2, 1280, 4, 4)
    # channel counts are multiples of 8 (width 0.5: 16 -> 8, 24 -> 12 -> 16, 320 -> 160)
    assert all(c.out_channels % 8 == 0 for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    assert sorted({b.block[-2].out_channels for b in blocks}) == [8, 16, 32, 48, 80, 160]
    with pytest.raises(ValueError, match="width"):
        nuq.create_model("mobilenetv2", width=0)


def test_preact_resnet18_structure():
    m = nuq.create_model("preact_resnet18", num_classes=10, in_channels=1, width=8)
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    # stem + 4 stages x 2 blocks x 2 convolutions + 3 shortcuts
    assert len(convs) == 20 and convs[-1].out_channels == 64
    full = nuq.create_model("preact_resnet18")
    # the CIFAR pre-activation ResNet-18's 11,171,146 plus the final BatchNorm's 2 x 512
    assert sum(p.numel() for p in full.parameters()) == 11_171_146 + 1024
