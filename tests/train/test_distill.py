"""Knowledge distillation: the loss, and a float teacher run driving a QAT run."""

import pytest
import torch
import torch.nn.functional as F
from tests_helpers import needs_data

from nuq.runs.config import config_from_dict
from nuq.train import train
from nuq.train.loop import distill_loss


def test_distill_loss_reduces_to_its_parts():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    y = torch.randint(0, 10, (6,))
    torch.testing.assert_close(distill_loss(s, y, None, 2.0, 1.0), F.cross_entropy(s, y))
    torch.testing.assert_close(distill_loss(s, y, t, 2.0, 0.0), F.cross_entropy(s, y))
    assert float(distill_loss(s, y, s.clone(), 3.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    kl = (F.softmax(t / 2, 1) * (F.log_softmax(t / 2, 1) - F.log_softmax(s / 2, 1))).sum(1).mean() * 4
    torch.testing.assert_close(distill_loss(s, y, t, 2.0, 1.0), kl)


def run(out, **kw):
    raw = {"name": "d", "out_dir": str(out), "epochs": 1, "progress": False,
           "model": {"name": "mlp", "kwargs": {"hidden": 32}},
           "data": {"train_subset": 1000, "test_subset": 300, "batch_size": 100}, "optim": {"lr": 0.05}}
    raw.update(kw)
    return config_from_dict(raw)


@needs_data
def test_qat_with_teacher(tmp_path):
    train(run(tmp_path / "t"))
    final = train(run(tmp_path / "s", init_from=str(tmp_path / "t"), qat={"w_bits": 2, "a_bits": 2},
                      distill={"teacher": str(tmp_path / "t"), "temperature": 2.0, "alpha": 0.5}))
    assert final["test_top1"] > 30  # chance is 10%
    # a bigger or different teacher is fine; a checkpoint that does not match its own
    # architecture is a clear error
    ck = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)
    ck["config"]["model"]["kwargs"]["hidden"] = 16
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="distill.teacher"):
        train(run(tmp_path / "x", distill={"teacher": str(tmp_path / "bad.pt")}))


def test_teacher_from_the_shipped_weights():
    """distill.teacher: pretrained:<dataset> is the shipped float model of the run's architecture."""
    import nuq
    from nuq.train.build import build_teacher

    cfg = config_from_dict({"model": {"name": "resnet20", "kwargs": {"width": 16}},
                            "distill": {"teacher": "pretrained:fashion_mnist"}})
    teacher = build_teacher(cfg, 10, 1, torch.device("cpu"))
    ref = nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist").eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(teacher(x), ref(x))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    bad = config_from_dict({"model": {"name": "resnet20", "kwargs": {"width": 8}},
                            "distill": {"teacher": "pretrained:fashion_mnist"}})
    with pytest.raises(ValueError, match=r"distill.teacher=pretrained:fashion_mnist: .*'width': 16"):
        build_teacher(bad, 10, 1, torch.device("cpu"))
