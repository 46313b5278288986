"""Progressive fine-tuning through the trainer: a W2A2 nuLSQ run initialised from a
W3A3 run starts with merged steps, whose levels are a subset of the 3-bit levels."""

import torch
from tests_helpers import needs_data

from nuq.nn.walk import named_quantizers
from nuq.runs.checkpoint import load_checkpoint
from nuq.runs.config import config_from_dict
from nuq.runs.load import rebuild
from nuq.train import train
from nuq.train.build import build_model


def cfg(out, bits, **kw):
    return config_from_dict({"name": f"w{bits}", "out_dir": str(out), "epochs": 1, "progress": False,
                             "model": {"name": "mlp", "kwargs": {"hidden": 32}},
                             "data": {"train_subset": 1000, "test_subset": 300, "batch_size": 100},
                             "optim": {"lr": 0.05},
                             "qat": {"weight": "nulsq", "act": "nulsq", "w_bits": bits, "a_bits": bits}, **kw})


@needs_data
def test_progressive_init_merges_steps(tmp_path):
    train(cfg(tmp_path / "w3", 3))
    ck = load_checkpoint(tmp_path / "w3")
    src, _ = rebuild(ck, 10, 1)
    c2 = cfg(tmp_path / "w2", 2, init_from=str(tmp_path / "w3"))
    model = build_model(c2, 10, 1, calib=None, device=torch.device("cpu"))
    old = dict(named_quantizers(src))
    n = 0
    for name, q in named_quantizers(model):
        if q.method != "nulsq":
            continue
        assert q.bits == 2 and old[name].bits == 3
        # each merged level is an old level (up to float summation order)
        dist = (q.levels()[:, None] - old[name].levels()[None, :]).abs().min(1).values
        assert (dist <= 1e-6 * old[name].levels().abs().max()).all(), name
        n += 1
    assert n > 0
    final = train(c2)
    assert final["test_top1"] > 30  # chance is 10%
