"""Every registered model builds, runs forward/backward, and survives prepare()."""

import pytest
import torch

import nuq

MODELS = nuq.available_models()


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward_and_prepare(name):
    kw = {"width": 4} if "resnet" in name else {"hidden": 16}
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
