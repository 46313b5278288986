"""RCF quantizers (apot, pot, uniform, lloyd) against an independent per-element reference of
APoT Eq. 7 (nearest level by distance) and Eq. 8 (alpha gradient), and their interface."""

import math

import pytest
import torch
from tests_helpers import MODES, run_quantizer

import nuq
from nuq.quantizers import make_quantizer
from nuq.quantizers.levelsets import level_set

RCF = ["apot", "pot", "uniform"]


def reference(x, alpha, levels, signed, role="activation"):
    """Eq. 7 by brute-force nearest level, Eq. 8 elementwise with the inside set closed
    (|W| <= alpha), STE for x: 1 everywhere for weights (Sec. 2.5), 1 inside for activations."""
    v = x / alpha
    lo = -1.0 if signed else 0.0
    c = v.clamp(lo, 1.0)
    proj = levels[(c[:, None] - levels[None, :]).abs().argmin(1)]
    inside = (v >= lo) & (v <= 1.0)
    above = torch.ones_like(v)
    below = torch.full_like(v, -1.0 if signed else 0.0)  # unsigned: clip at 0 does not depend on alpha
    dalpha = torch.where(inside, proj - v, torch.where(v > 1, above, below))
    dx = torch.ones_like(v) if role == "weight" else inside.to(x.dtype)
    return alpha * proj, dx, dalpha


def make(name, bits, signed, alpha, **kw):
    """The quantizer with the paper's raw gradient (Eq. 8 as written) unless told otherwise."""
    q = nuq.make_quantizer(name, bits=bits, signed=signed, **{"grad_scale": None, **kw}).double()
    q.alpha.data.fill_(alpha)
    q.mark_initialized()
    return q


@pytest.mark.parametrize("name", RCF)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ["activation", "weight"])
def test_forward_and_gradients_match_eq7_eq8(name, bits, signed, mode, role):
    alpha = 0.83
    if role == "weight" and not signed:
        pytest.skip("weights are signed")
    q = make(name, bits, signed, alpha, role=role)
    x = torch.randn(4000, dtype=torch.float64) * 0.7
    x[:4] = torch.tensor([alpha, -alpha, 0.0, 2 * alpha], dtype=torch.float64)  # the boundaries of Eq. 8
    x.requires_grad_()
    g = torch.randn(4000, dtype=torch.float64)
    y = run_quantizer(q, x, mode)
    (y * g).sum().backward()
    ry, rdx, rda = reference(x.detach(), alpha, level_set(name, bits, signed), signed, role)
    torch.testing.assert_close(y.detach(), ry, atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad, g * rdx, atol=0, rtol=0)
    torch.testing.assert_close(q.alpha.grad, (g * rda).sum(), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", RCF)
def test_grad_scale_lsq(name):
    q = make(name, 3, True, 1.1, grad_scale="lsq")
    x = torch.randn(300, dtype=torch.float64)
    g = torch.randn(300, dtype=torch.float64)
    (q(x) * g).sum().backward()
    _, _, rda = reference(x, 1.1, level_set(name, 3, True), True)
    torch.testing.assert_close(q.alpha.grad, (g * rda).sum() / math.sqrt(300 * 3), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", RCF)
def test_float32_matches_float64(name):
    q32 = nuq.make_quantizer(name, bits=4, signed=True)
    q32.alpha.data.fill_(1.3)
    q32.mark_initialized()
    q64 = make(name, 4, True, 1.3)
    x = torch.randn(10000) * 0.8
    y32, y64 = q32(x), q64(x.double())
    # the same level for all but (at most) elements within rounding of a threshold
    assert (y32.double() - y64).abs().gt(1e-5).float().mean() < 1e-3


@pytest.mark.parametrize("name", RCF + ["lloyd"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_levels_count_max_and_outputs(name, bits, signed):
    q = nuq.make_quantizer(name, bits=bits, signed=signed)
    x = torch.randn(2000) * 2
    q.initialize(x if signed else x.relu())
    lv = q.levels()
    assert lv.numel() == (2**bits - 1 if signed else 2**bits)
    assert lv.max() == q.effective_alpha().detach()
    if signed:
        torch.testing.assert_close(lv, -lv.flip(0), atol=0, rtol=0)
    assert torch.isin(q(x), lv).all()


@pytest.mark.parametrize("name", RCF)
def test_per_channel_equals_per_tensor_rows(name):
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    q = nuq.make_quantizer(name, bits=3, signed=True, per_channel=True, channels=4, grad_scale="lsq").double()
    q.initialize(x, method="mse")
    xg = x.clone().requires_grad_()
    q(xg).pow(2).sum().backward()
    assert q.levels().shape == (4, 7)
    for c in range(4):
        qc = make(name, 3, True, q.alpha[c].item(), grad_scale="lsq")
        xc = x[c].clone().requires_grad_()
        yc = qc(xc)
        yc.pow(2).sum().backward()
        torch.testing.assert_close(q(x)[c], yc.detach(), atol=0, rtol=0)
        torch.testing.assert_close(q.alpha.grad[c], qc.alpha.grad, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(xg.grad[c], xc.grad, atol=0, rtol=0)


def test_init_methods():
    w = torch.randn(5000)
    a = torch.randn(5000).relu()
    q = nuq.make_quantizer("apot", bits=5, signed=True)
    q.initialize(w, method="const")
    assert q.alpha.item() == 3.0  # Appendix C.2, weights
    q = nuq.make_quantizer("apot", bits=5, signed=False)
    q.initialize(a, method="const")
    assert q.alpha.item() == 8.0  # Appendix C.2, activations
    q = nuq.make_quantizer("apot", bits=4, signed=True)
    q.initialize(w, method="lsq")
    assert q.alpha.item() == pytest.approx(min(2 * w.abs().mean().item() * math.sqrt(7), w.abs().max().item()))
    q.initialize(w, method="mse")
    best = q.alpha.item()

    def err(alpha):
        q.alpha.data.fill_(alpha)
        return (q(w) - w).pow(2).mean().item()

    e = err(best)
    assert e <= err(best * 0.9) and e <= err(best * 1.1)
    with pytest.raises(ValueError, match="method"):
        q.initialize(w, method="nope")


def test_alpha_floor_and_half_precision():
    q = nuq.make_quantizer("apot", bits=4, signed=True)
    q.alpha.data.fill_(-1.0)
    q.mark_initialized()
    x = torch.randn(100, requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(q.alpha.grad).all()
    q.alpha.data.fill_(1.0)
    xh = torch.randn(64, dtype=torch.float16, requires_grad=True)
    yh = q(xh)
    assert yh.dtype == torch.float16
    yh.float().sum().backward()
    assert xh.grad.dtype == torch.float16 and torch.isfinite(q.alpha.grad).all()


def test_pot_extreme_levels_are_exact():
    # unsigned 6-bit PoT: smallest level 2^-62; float32 resolves it via the float's exponent
    q = nuq.make_quantizer("pot", bits=6, signed=False)
    q.alpha.data.fill_(1.0)
    q.mark_initialized()
    x = torch.tensor([2.0**-62, 0.74 * 2.0**-40, 0.76 * 2.0**-40, 2.0**-63 * 0.99, 2.0**-63 * 1.01, 5.0])
    torch.testing.assert_close(q(x), torch.tensor([2.0**-62, 2.0**-41, 2.0**-40, 0.0, 2.0**-62, 1.0]),
                               atol=0, rtol=0)


def test_pot_terms():
    assert nuq.make_quantizer("pot", bits=5, signed=True).pot_terms == 1
    # signed: sign bit + (b-1)-bit magnitude; Eq. 5 n = b/2, Eq. 6 n + 1
    assert [nuq.make_quantizer("apot", bits=b, signed=True).pot_terms for b in (2, 3, 4, 5, 8)] == [1, 1, 2, 2, 4]
    assert nuq.make_quantizer("apot", bits=4, signed=False).pot_terms == 2
    assert nuq.make_quantizer("uniform", bits=4).pot_terms is None


def test_inherit_across_bit_widths():
    q5 = make("apot", 5, True, 2.5)
    q4 = nuq.make_quantizer("apot", bits=4, signed=True).double()
    q4.inherit(q5)
    assert q4.alpha.item() == 2.5 and bool(q4.initialized)
    assert q4.levels().numel() == 15
    with pytest.raises(ValueError, match="inherit"):
        q4.inherit(make("pot", 4, True, 1.0))


def test_lloyd_quantizer_fits_and_beats_uniform():
    x = torch.randn(20000)
    ql = nuq.make_quantizer("lloyd", bits=3, signed=True)
    ql.initialize(x, method="lloyd")
    qu = nuq.make_quantizer("uniform", bits=3, signed=True)
    qu.initialize(x, method="mse")
    lv = ql.levels()
    assert lv.numel() == 7 and (lv == 0).any()
    assert (ql(x) - x).pow(2).mean() < (qu(x) - x).pow(2).mean()
    # the fitted table is state: it round-trips through the state dict
    q2 = nuq.make_quantizer("lloyd", bits=3, signed=True)
    q2.load_state_dict(ql.state_dict())
    torch.testing.assert_close(q2.levels(), lv, atol=0, rtol=0)


def test_apot_base_bit_width_option():
    q = nuq.make_quantizer("apot", bits=4, signed=False, k=4)  # k = b: PoT levels
    torch.testing.assert_close(q.table, level_set("pot", 4), atol=0, rtol=0)
    with pytest.raises(ValueError, match="k="):
        nuq.make_quantizer("apot", bits=6, k=4)


@pytest.mark.parametrize("name", RCF)
def test_channels_last_input_matches_contiguous(name):
    q = make(name, 3, True, 1.2)
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    g = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    yc = q(xc)
    yc.backward(g)
    ga = q.alpha.grad.clone()
    q.alpha.grad = None
    xn = x.clone().requires_grad_()
    yn = q(xn)
    yn.backward(g)
    torch.testing.assert_close(yc, yn, atol=0, rtol=0)
    torch.testing.assert_close(xc.grad, xn.grad, atol=0, rtol=0)
    torch.testing.assert_close(ga, q.alpha.grad, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("method", ["apot", "pot", "uniform"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_clip_max_is_no_clipping(method, per_channel):
    """Table 3's "without RCF": alpha = max|w| of the current tensor, nothing clipped, not learned."""
    w = torch.randn(6, 3, 3, 3)
    q = make_quantizer(method, bits=4, signed=True, clip="max", per_channel=per_channel,
                       channels=6 if per_channel else None)
    q.initialize(w * 0.1, "mse")
    assert q.dynamic and not q.alpha.requires_grad
    out = q(w)
    top = w.abs().amax(dim=(1, 2, 3)) if per_channel else w.abs().max()
    torch.testing.assert_close(q.alpha.detach(), top, atol=0, rtol=0)
    # the largest magnitude lands exactly on the largest level: nothing is clipped
    big = out.abs().amax(dim=(1, 2, 3)) if per_channel else out.abs().max()
    torch.testing.assert_close(big, top, atol=0, rtol=1e-6)
    assert torch.equal(q.levels()[..., -1], q.alpha.detach())
    with pytest.raises(ValueError, match="clip='auto'"):
        make_quantizer(method, bits=4, clip="auto")
