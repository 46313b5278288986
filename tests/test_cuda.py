"""CUDA checks (skipped without a GPU; ``bench/gpu_check.sh`` runs them on a GPU machine):
every quantizer gives the CPU's outputs and gradients on CUDA, eager and compiled, and a
bf16 QAT run trains there."""

import pytest
import torch
from tests_helpers import needs_data

import nuq

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
METHODS = nuq.available_quantizers()


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_matches_cpu(name, signed, compiled):
    torch.manual_seed(0)
    q = nuq.make_quantizer(name, bits=2, signed=signed)
    x = torch.randn(64, 16, 8, 8) * 1.5
    x = x if signed else x.relu()
    q.initialize(x, method=q.init_methods[0])
    g = torch.randn_like(x)
    qc = __import__("copy").deepcopy(q).cuda()
    a = x.clone().requires_grad_()
    q(a).backward(g)
    b = x.cuda().requires_grad_()
    run = torch.compile(qc, fullgraph=True) if compiled else qc
    y = run(b)
    y.backward(g.cuda())
    torch.testing.assert_close(y.cpu(), q(x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-5, atol=1e-5)
    for p, pc in zip(q.parameters(), qc.parameters()):
        torch.testing.assert_close(pc.grad.cpu(), p.grad, rtol=1e-3, atol=1e-3)


@needs_data
def test_bf16_compiled_qat_on_cuda(tmp_path):
    from nuq.runs.config import config_from_dict
    from nuq.train import train

    base = {"epochs": 1, "progress": False, "device": "cuda", "model": {"name": "resnet20", "kwargs": {"width": 8}},
            "data": {"train_subset": 5000, "batch_size": 128}, "optim": {"lr": 0.1}}
    f = train(config_from_dict({**base, "name": "f", "out_dir": str(tmp_path / "f")}))
    q = train(config_from_dict({**base, "name": "q", "out_dir": str(tmp_path / "q"), "init_from": str(tmp_path / "f"),
                                "optim": {"lr": 0.02}, "qat": {"w_bits": 2, "a_bits": 2},
                                "train": {"precision": "bf16", "channels_last": True, "compile": True}}))
    assert f["test_top1"] > 50 and q["test_top1"] > 40
