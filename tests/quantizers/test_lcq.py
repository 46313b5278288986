"""LCQ (learnable companding quantization) against torch autograd of an equivalent
differentiable formulation (compander, STE round in the companded domain, expander)."""

import math

import pytest
import torch
from tests_helpers import MODES, run_quantizer

import nuq


def lcq_autograd(x, alpha, theta, n, signed):
    """Q(x) = alpha s f^-1(round(n f(u)) / n), u = clip(|x|/alpha, 0, 1), written with
    differentiable torch ops; the STE is the detach trick on the round only."""
    k = theta.numel()
    gam = torch.softmax(theta, 0)
    d = torch.cat([gam.new_zeros(1), gam.cumsum(0)])
    u = ((x.abs() if signed else x) / alpha).clamp(0, 1)
    t = u * k
    idx = t.detach().floor().clamp(max=k - 1).long()
    z = d[idx] + gam[idx] * (t - idx)
    zq = z + ((z * n).round() / n - z).detach()
    j = torch.bucketize(zq.detach(), d[1:k].detach(), right=True)
    y = (j + (zq - d[j]) / gam[j]) / k
    return alpha * y * (torch.sign(x) if signed else 1)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("grad_scale", [None, "lsq"])
@pytest.mark.parametrize("mode", MODES)
def test_lcq_matches_autograd_reference(bits, signed, grad_scale, mode):
    gen = torch.Generator().manual_seed(bits + 10 * signed)
    q = nuq.make_quantizer("lcq", bits=bits, signed=signed, grad_scale=grad_scale).double()
    q.theta.data = torch.randn(16, generator=gen, dtype=torch.float64) * 0.7
    q.alpha.data.fill_(2.5)
    q.mark_initialized()
    x = (torch.randn(3000, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    g = torch.randn(3000, generator=gen, dtype=torch.float64)
    y = run_quantizer(q, x, mode)
    (y * g).sum().backward()
    xr = x.detach().clone().requires_grad_()
    al = q.alpha.detach().clone().requires_grad_()
    th = q.theta.detach().clone().requires_grad_()
    yr = lcq_autograd(xr, al, th, q.n, signed)
    (yr * g).sum().backward()
    gs = 1.0 if grad_scale is None else 1.0 / math.sqrt(3000 * q.qp)
    torch.testing.assert_close(y.detach(), yr.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(q.alpha.grad, al.grad * gs, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(q.theta.grad, th.grad * gs, atol=1e-9, rtol=1e-9)
    assert th.grad.abs().max() > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_levels_are_the_expanded_uniform_grid(bits, signed):
    q = nuq.make_quantizer("lcq", bits=bits, signed=signed).double()
    q.theta.data = torch.randn(16, dtype=torch.float64)
    q.mark_initialized()
    lv = q.levels()
    n = q.n
    assert lv.numel() == (2 * n + 1 if signed else n + 1)
    assert torch.all(lv[1:] > lv[:-1])
    assert lv[-1] == q.alpha and (lv == 0).any()
    # f(level / alpha) is the uniform grid c / n of the companded domain
    k = 16
    gam = torch.softmax(q.theta.detach(), 0)
    d = torch.cat([gam.new_zeros(1), gam.cumsum(0)])
    pos = lv[lv >= 0] / q.alpha.detach()
    idx = (pos * k).floor().clamp(max=k - 1).long()
    f = d[idx] + gam[idx] * (pos * k - idx)
    torch.testing.assert_close(f, torch.arange(n + 1, dtype=torch.float64) / n, atol=1e-12, rtol=0)
    x = torch.randn(5000, dtype=torch.float64) * 4
    y = q(x)
    assert torch.isin(y, lv).all()
    torch.testing.assert_close(q.decode(q.encode(x)), y, atol=0, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_uniform_at_init_equals_uniform_quantizer(bits, signed):
    q = nuq.make_quantizer("lcq", bits=bits, signed=signed)
    q.initialize(torch.zeros(1) + 1, method="const")
    alpha = 3.0 if signed else 8.0
    assert q.alpha.item() == alpha and (q.theta == 0).all()
    n = q.n
    x = (torch.randn(20000) * alpha * 0.7).requires_grad_()
    y = q(x)
    v = x.detach() / alpha
    ref = (v.clamp(-1 if signed else 0, 1) * n).round() / n * alpha
    torch.testing.assert_close(y.detach(), ref, atol=1e-5, rtol=0)
    y.sum().backward()
    inside = (x.detach().abs() < alpha) if signed else (x.detach() >= 0) & (x.detach() < alpha)
    torch.testing.assert_close(x.grad, inside.float(), atol=1e-6, rtol=0)  # plain STE


def test_gradients_finite_for_extreme_theta_and_alpha():
    q = nuq.make_quantizer("lcq", bits=3)
    q.theta.data = torch.tensor([60.0] + [-60.0] * 15)
    q.alpha.data.fill_(-1.0)  # floored in the forward pass
    q.mark_initialized()
    x = (torch.rand(1000) * 3).requires_grad_()
    y = q(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for name, p in q.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_intervals_configurable_and_validated():
    q = nuq.make_quantizer("lcq", bits=2, intervals=4)
    assert q.theta.shape == (4,)
    q.mark_initialized()
    x = torch.rand(100, requires_grad=True) * 9
    q(x).sum().backward()
    with pytest.raises(ValueError, match="intervals"):
        nuq.make_quantizer("lcq", bits=2, intervals=0)


def test_init_methods():
    x = torch.randn(20000)
    q = nuq.make_quantizer("lcq", bits=4, signed=True)
    assert q.init_methods[0] == "mse" and q.alpha.item() == 3.0  # constructed with the C-III constants
    assert nuq.make_quantizer("lcq", bits=4).alpha.item() == 8.0
    q.initialize(x, method="lsq")
    assert q.alpha.item() == pytest.approx(2 * math.sqrt(7) * x.abs().mean().item(), rel=1e-5)
    q.initialize(x, method="mse")

    def err(a):
        return ((x / a).clamp(-1, 1).mul(7).round().div(7).mul(a) - x).pow(2).mean().item()

    a = q.alpha.item()
    assert err(a) <= err(a * 0.9) and err(a) <= err(a * 1.1)


def test_compiles_fullgraph():
    q = nuq.make_quantizer("lcq", bits=2)
    q.mark_initialized()
    x = torch.rand(64) * 9
    f = torch.compile(q.quantize, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), q(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    q = nuq.make_quantizer("lcq", bits=3, signed=True)
    q.theta.data = torch.randn(16) * 0.3
    q.mark_initialized()
    x = (torch.randn(4, 100) * 2).to(dtype).requires_grad_()
    y = q(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y2 = q(x.detach().float())
    assert y2.dtype == torch.float32 and torch.isin(y2, q.levels()).all()


@pytest.mark.parametrize("signed", [False, True])
def test_nan_input_stays_nan_and_leaves_the_rest_alone(signed):
    q = nuq.make_quantizer("lcq", bits=3, signed=signed)
    x = torch.randn(1000)
    q.initialize(x, method=q.init_methods[0])
    clean = q(x)
    x_nan = x.clone()
    x_nan[::7] = float("nan")
    y = q(x_nan)
    assert torch.isnan(y[::7]).all()  # a diverged input is not hidden behind a level
    keep = torch.ones(1000, dtype=torch.bool)
    keep[::7] = False
    assert torch.equal(y[keep], clean[keep])
