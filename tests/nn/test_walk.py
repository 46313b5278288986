"""Parameter groups of a prepared model, and the default gradient scale that lets a plain
optimiser train the quantizers."""

import math

import pytest
import torch

import nuq
from nuq.nn.walk import quantizer_parameters


def prepared(grad_scale="lsq"):
    torch.manual_seed(0)
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=8)
    x = torch.randn(32, 1, 28, 28)
    cfg = nuq.QATConfig(w_bits=2, a_bits=2, grad_scale=grad_scale)
    return nuq.prepare(model, cfg, calib=[x]), x


def test_param_groups_split_weights_and_quantizers():
    q, _ = prepared()
    groups = nuq.param_groups(q, lr=0.1, weight_decay=5e-4)
    qids = {id(p) for p in quantizer_parameters(q)}
    assert {id(p) for p in groups[1]["params"]} == qids and qids
    assert not qids & {id(p) for p in groups[0]["params"]}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(q.parameters()))
    assert groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 5e-4
    assert groups[1]["lr"] == pytest.approx(1e-3) and groups[1]["weight_decay"] == 0.0
    float_model = nuq.create_model("mlp", in_channels=1, hidden=8)
    assert len(nuq.param_groups(float_model, lr=0.1)) == 1
    for bad in ({"lr": 0}, {"lr": 0.1, "q_lr_mult": -1}, {"lr": "0.1"}, {"lr": 0.1, "weight_decay": True}):
        with pytest.raises(ValueError, match=next(iter(k for k in bad if k != "lr" or len(bad) == 1))):
            nuq.param_groups(q, **bad)


def steps_after_sgd(q, x, groups, n=3):
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    y = torch.randint(0, 10, (x.shape[0],))
    for _ in range(n):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(q(x), y).backward()
        opt.step()
    return torch.cat([p.detach().abs().reshape(-1) for p in quantizer_parameters(q)])


def test_default_grad_scale_trains_with_a_plain_optimiser():
    """SGD over model.parameters() at the weights' lr: with the default gradient scale the
    quantizer steps stay within a factor 2 of their calibrated values; with the paper's raw
    gradient they move far more (the reason the default is LSQ's 1/sqrt(N*Qp))."""
    q, x = prepared()
    assert all(m.grad_scale == "lsq" for _, m in nuq.named_quantizers(q))
    start = torch.cat([p.detach().abs().reshape(-1).clone() for p in quantizer_parameters(q)])
    after = steps_after_sgd(q, x, q.parameters())
    ratio = (after / start).clamp_min(1e-12)
    assert bool((ratio.log().abs() < math.log(2)).all())
    raw, x = prepared(grad_scale=None)
    moved_raw = (steps_after_sgd(raw, x, raw.parameters()) / start).clamp_min(1e-12).log().abs().max()
    assert moved_raw > ratio.log().abs().max() * 10
