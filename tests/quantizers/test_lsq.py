"""LSQ against an independent implementation of the nuLSQ supplement's Eq. 1 and Eq. 4."""

import math

import pytest
import torch
from tests_helpers import MODES, run_quantizer

import nuq


def ref_lsq(x, s, qn, qp):
    """Per-element reference: forward Eq. 1 as a sum of unit steps, gradients Eq. 4."""
    y = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    ds = torch.zeros_like(x)
    for i, xi in enumerate(x.tolist()):
        q = sum(s for n in range(1, qp + 1) if xi - (n - 0.5) * s >= 0)
        q -= sum(s for n in range(1, qn + 1) if -xi - (n - 0.5) * s > 0)
        y[i] = q
        inside = -qn * s < xi <= qp * s
        dx[i] = 1.0 if inside else 0.0
        ds[i] = q / s - (xi / s if inside else 0.0)
    return y, dx, ds


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("grad_scale", [None, "lsq"])
@pytest.mark.parametrize("mode", MODES)
def test_lsq_matches_reference(bits, signed, grad_scale, mode):
    q = nuq.make_quantizer("lsq", bits=bits, signed=signed, grad_scale=grad_scale).double()
    s = 0.37
    q.step.data.fill_(s)
    q.mark_initialized()
    x = (torch.randn(500, dtype=torch.float64) * 2).requires_grad_()
    g = torch.randn(500, dtype=torch.float64)
    y = run_quantizer(q, x, mode)
    (y * g).sum().backward()
    ry, rdx, rds = ref_lsq(x.detach(), s, q.qn, q.qp)
    torch.testing.assert_close(y.detach(), ry, atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad, g * rdx, atol=0, rtol=0)
    scale = 1.0 if grad_scale is None else 1.0 / math.sqrt(500 * q.qp)
    torch.testing.assert_close(q.step.grad, (g * rds).sum() * scale, atol=1e-9, rtol=1e-9)


def test_lsq_per_channel_gradient_equals_per_tensor_rows():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    q = nuq.make_quantizer("lsq", bits=3, signed=True, per_channel=True, channels=4, grad_scale="lsq").double()
    q.initialize(x)
    xg = x.clone().requires_grad_()
    q(xg).pow(2).sum().backward()
    for c in range(4):
        qc = nuq.make_quantizer("lsq", bits=3, signed=True, grad_scale="lsq").double()
        qc.step.data.fill_(q.step[c].item())
        qc.mark_initialized()
        xc = x[c].clone().requires_grad_()
        qc(xc).pow(2).sum().backward()
        torch.testing.assert_close(q.step.grad[c], qc.step.grad, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(xg.grad[c], xc.grad, atol=0, rtol=0)


def test_lsq_init_values():
    x = torch.randn(10000)
    q = nuq.make_quantizer("lsq", bits=4, signed=True)
    q.initialize(x, method="lsq")
    assert q.step.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-5)
    q.initialize(x, method="mse")
    # the MSE step beats a slightly smaller and a slightly larger step
    def err(s):
        return ((x / s).clamp(-8, 7).round() * s - x).pow(2).mean().item()
    s = q.step.item()
    assert err(s) <= err(s * 0.9) and err(s) <= err(s * 1.1)


def test_step_floor_keeps_output_finite():
    q = nuq.make_quantizer("lsq", bits=2)
    q.step.data.fill_(-1.0)
    q.mark_initialized()
    x = torch.rand(100, requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
