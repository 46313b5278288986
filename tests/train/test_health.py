"""The first-step check for quantized layers whose output no longer depends on the input."""

import pytest
import torch
from tests_helpers import needs_data
from torch import nn

import nuq
from nuq.models import register_model
from nuq.runs.config import config_from_dict
from nuq.train import train
from nuq.train.health import constant_layers


def dead_after_first(num_classes=10, in_channels=1):
    """Flatten -> Linear -> ReLU that is zero for every input -> Linear -> ReLU -> Linear."""
    first = nn.Linear(in_channels * 28 * 28, 16)
    with torch.no_grad():
        first.bias.fill_(-1e4)  # ReLU(-1e4 + w.x) = 0 for any normalised image
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, num_classes))


register_model("test_dead_after_first")(dead_after_first)


def prepared(model, x):
    return nuq.prepare(model, nuq.QATConfig(w_bits=2, a_bits=2), calib=[x])


def test_names_the_layers_whose_output_ignores_the_input():
    x = torch.randn(16, 1, 28, 28)
    q = prepared(dead_after_first(), x).train()
    assert constant_layers(q, x) == ["3", "5"]
    healthy = prepared(nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4), x).train()
    assert constant_layers(healthy, x) == []
    assert constant_layers(q, x[:1]) == []  # one input: nothing to compare


def test_leaves_no_trace():
    """Train-mode BatchNorm statistics, observers and the RNG are as before the check."""
    x = torch.randn(16, 1, 28, 28)
    q = prepared(nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4), x).train()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    rng = torch.get_rng_state()
    constant_layers(q, x * 3 + 1)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


@needs_data
def test_training_warns_on_a_dead_signal(tmp_path):
    cfg = {"name": "dead", "out_dir": str(tmp_path / "d"), "epochs": 1, "progress": False,
           "model": {"name": "test_dead_after_first"}, "qat": {"w_bits": 2, "a_bits": 2},
           "data": {"train_subset": 200, "test_subset": 100, "batch_size": 50}}
    with pytest.warns(UserWarning, match=r"layer\(s\) 3, 5 output the same values for every input"):
        train(config_from_dict(cfg))
