"""PACT (Choi et al., 2018) and DoReFa-Net (Zhou et al., 2016) against per-element references."""

import math

import pytest
import torch
from tests_helpers import MODES, run_quantizer

import nuq
from nuq.nn.transforms import make_transform


def make_pact(bits, signed, alpha, **kw):
    q = nuq.make_quantizer("pact", bits=bits, signed=signed, **kw).double()
    q.alpha.data.fill_(alpha)
    q.mark_initialized()
    return q


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("grad_scale", [None, "lsq"])
@pytest.mark.parametrize("mode", MODES)
def test_pact_matches_reference(bits, signed, grad_scale, mode):
    alpha = 1.7
    q = make_pact(bits, signed, alpha, grad_scale=grad_scale)
    x = (torch.randn(3000, dtype=torch.float64) * 1.5).requires_grad_()
    g = torch.randn(3000, dtype=torch.float64)
    (run_quantizer(q, x, mode) * g).sum().backward()
    xd = x.detach()
    qp = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    lo = -alpha if signed else 0.0
    # PACT Eq. 1-2: clip to [lo, alpha], then qp uniform steps of alpha/qp
    y_ref = torch.round(xd.clamp(lo, alpha) * qp / alpha) * alpha / qp
    torch.testing.assert_close(q(xd), y_ref, atol=1e-12, rtol=0)
    # PACT Eq. 3: dy/dalpha = 1 where x >= alpha (and -1 where x <= -alpha, signed)
    da = (xd >= alpha).double() - ((xd <= -alpha).double() if signed else 0.0)
    inside = ((xd > lo) if signed else (xd >= 0)) & (xd < alpha)
    scale = 1.0 if grad_scale is None else 1.0 / math.sqrt(3000 * qp)
    torch.testing.assert_close(q.alpha.grad, (g * da).sum() * scale, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(x.grad, g * inside, atol=0, rtol=0)


def test_pact_levels_and_ternary():
    q = make_pact(2, True, 0.5)
    torch.testing.assert_close(q.levels(), torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64))
    q = make_pact(3, False, 1.4)
    torch.testing.assert_close(q.levels(), torch.arange(8, dtype=torch.float64) * 0.2)


def test_pact_init():
    x = torch.randn(4000).relu()
    q = nuq.make_quantizer("pact", bits=4)
    q.initialize(x, method="const")
    assert q.alpha.item() == 10.0
    q.initialize(x, method="mse")
    assert 0 < q.alpha.item() <= x.max().item()


def test_pact_per_channel():
    x = torch.randn(3, 50, dtype=torch.float64)
    q = nuq.make_quantizer("pact", bits=3, signed=True, per_channel=True, channels=3).double()
    q.alpha.data.copy_(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    q.mark_initialized()
    q(x).sum().backward()
    for c in range(3):
        qc = make_pact(3, True, q.alpha[c].item())
        qc(x[c]).sum().backward()
        torch.testing.assert_close(q.alpha.grad[c], qc.alpha.grad, atol=1e-12, rtol=0)
    assert q.levels().shape == (3, 7)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_activation(bits):
    q = nuq.make_quantizer("dorefa", bits=bits, signed=False)
    x = (torch.randn(2000) * 1.5).requires_grad_()
    g = torch.randn(2000)
    y = q(x)
    n = 2**bits - 1
    # DoReFa Eq. 5 and 11: quantize_k(clip(x, 0, 1)) = round((2^k - 1) r) / (2^k - 1)
    torch.testing.assert_close(y, torch.round(x.detach().clamp(0, 1) * n) / n, atol=1e-7, rtol=0)
    (y * g).sum().backward()
    xd = x.detach()
    torch.testing.assert_close(x.grad, g * ((xd >= 0) & (xd <= 1)), atol=0, rtol=0)
    assert q.levels().numel() == 2**bits and list(q.parameters()) == []


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dorefa_weights_eq9_with_tanh_transform(bits):
    w = (torch.randn(6, 4, 3, 3, dtype=torch.float64) * 0.3).requires_grad_()
    t = make_transform("dorefa_tanh")
    q = nuq.make_quantizer("dorefa", bits=bits, signed=True).double()
    out = q(t(w))
    n = 2**bits - 1
    # Eq. 9: 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1, STE for round
    th = torch.tanh(w)
    r = th / (2 * th.abs().max()) + 0.5
    ref = 2 * (r + (torch.round(r * n) / n - r).detach()) - 1
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(w)
    (gw,) = torch.autograd.grad((out * g).sum(), w)
    (gr,) = torch.autograd.grad((ref * g).sum(), w)
    torch.testing.assert_close(gw, gr, atol=1e-12, rtol=1e-10)
    lv = q.levels()
    assert lv.numel() == 2**bits and not (lv == 0).any() and lv.min() == -1 and lv.max() == 1
    assert torch.isin(out.detach(), lv).all()


def test_dorefa_init_is_noop_and_tanh_zero_weights():
    q = nuq.make_quantizer("dorefa", bits=2, signed=True)
    for m in q.init_methods:
        q.initialize(torch.randn(10), method=m)
    out = make_transform("dorefa_tanh")(torch.zeros(3, 3))
    assert torch.equal(out, torch.zeros(3, 3))
