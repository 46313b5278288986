"""Float weights shipped with the package: they load, they score what they record, and
anything else is a clear error."""

import shutil

import pytest
import torch
from tests_helpers import needs_data

import nuq
from nuq.models import pretrained

SHIPPED = sorted(pretrained.shipped())


def test_something_is_shipped():
    assert ("resnet20", "fashion_mnist") in SHIPPED and ("mobilenetv2", "fashion_mnist") in SHIPPED


def test_left_out_architecture_arguments_take_the_shipped_ones():
    """The shipped MobileNetV2 is width 0.5; the factory's default is 1.0."""
    m = nuq.create_model("mobilenetv2", num_classes=10, in_channels=1, pretrained="fashion_mnist")
    assert m.fc.in_features == 1280 and m.features[1].block[-2].out_channels == 8


@needs_data
@pytest.mark.parametrize("name,dataset", SHIPPED)
def test_shipped_weights_score_their_recorded_accuracy(name, dataset):
    from nuq.data import load_dataset, make_loader
    from nuq.train.evaluate import evaluate

    rec = pretrained.record(name, dataset)
    model = nuq.create_model(name, num_classes=rec["num_classes"], in_channels=rec["in_channels"],
                             pretrained=dataset, **rec["kwargs"]).eval()
    test = load_dataset(dataset, None, train=False)
    assert len(test) == 10000
    with torch.no_grad():
        m = evaluate(model, make_loader(test, 500, train=False), torch.device("cpu"))
    assert m["top1"] == rec["test_top1"] and m["top5"] == rec["test_top5"]


def test_unknown_or_mismatched_pretrained_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no shipped weights for model 'resnet20' trained on 'cifar10'; shipped: "
                                         r"mobilenetv2 \(fashion_mnist\), resnet20 \(fashion_mnist\)"):
        nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="cifar10")
    with pytest.raises(ValueError, match=r"weights of 'resnet20' are for .*'width': 16"):
        nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist", width=8)
    with pytest.raises(ValueError, match="are for"):
        nuq.create_model("resnet20", num_classes=100, in_channels=1, pretrained="fashion_mnist", width=16)


def test_damaged_weights_fail_their_checksum(tmp_path, monkeypatch):
    shutil.copytree(pretrained.WEIGHTS, tmp_path / "w")
    pt = tmp_path / "w" / "resnet20_fashion_mnist.pt"
    raw = bytearray(pt.read_bytes())
    raw[-100] ^= 1
    pt.write_bytes(bytes(raw))
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path / "w")
    with pytest.raises(ValueError, match="fail their SHA-256 check"):
        nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist", width=16)


def test_a_run_starts_from_shipped_weights():
    from nuq.runs.config import config_from_dict
    from nuq.train.build import build_model

    cfg = config_from_dict({"model": {"name": "resnet20", "kwargs": {"width": 16}},
                            "init_from": "pretrained:fashion_mnist", "qat": None})
    model = build_model(cfg, 10, 1, None, torch.device("cpu"))
    want = pretrained.pretrained_state("resnet20", "fashion_mnist")
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    bad = config_from_dict({"model": {"name": "resnet20", "kwargs": {"width": 8}},
                            "init_from": "pretrained:fashion_mnist", "qat": None})
    with pytest.raises(ValueError, match="are for"):
        build_model(bad, 10, 1, None, torch.device("cpu"))
