"""APoT weight normalization (Eq. 9) and the DoReFa tanh normalization."""

import pytest
import torch

from nuq.nn.transforms import available_transforms, make_transform


def test_registered():
    assert {"apot_wn", "dorefa_tanh"} <= set(available_transforms())
    with pytest.raises(ValueError, match="eps"):
        make_transform("apot_wn", eps=0.0)


def test_statistics_and_formula():
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64) * 0.05 + 0.02
    out = make_transform("apot_wn")(w)
    assert abs(out.mean().item()) < 1e-12
    # population std, up to eps: sigma / (sigma + eps)
    sigma = w.std(correction=0)
    assert out.std(correction=0).item() == pytest.approx((sigma / (sigma + 1e-5)).item(), abs=1e-12)
    torch.testing.assert_close(out, (w - w.mean()) / (sigma + 1e-5), atol=1e-12, rtol=0)


def test_gradient_through_statistics():
    w = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, dtype=torch.float64)
    (gw,) = torch.autograd.grad((make_transform("apot_wn")(w) * g).sum(), w)
    ref = (w - w.mean()) / (w.std(correction=0) + 1e-5)
    (gr,) = torch.autograd.grad((ref * g).sum(), w)
    torch.testing.assert_close(gw, gr, atol=1e-12, rtol=1e-10)
    # the authors' code: statistics without gradient
    (gd,) = torch.autograd.grad((make_transform("apot_wn", detach_stats=True)(w) * g).sum(), w)
    torch.testing.assert_close(gd, g / (w.std(correction=0).detach() + 1e-5), atol=1e-12, rtol=0)


@pytest.mark.parametrize("value", [0.0, 0.1, -3.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_constant_tensor_is_finite(value, dtype):
    w = torch.full((64, 3, 3, 3), value, dtype=dtype, requires_grad=True)
    out = make_transform("apot_wn")(w)
    assert torch.isfinite(out).all() and out.abs().max() < 1e-2
    out.square().sum().backward()
    assert torch.isfinite(w.grad).all()
    if value == 0.0:
        assert torch.equal(out, torch.zeros_like(out))


def test_dorefa_tanh_range():
    w = torch.randn(10, 10)
    out = make_transform("dorefa_tanh")(w)
    assert out.abs().max() == 1.0
    torch.testing.assert_close(out, torch.tanh(w) / torch.tanh(w).abs().max())
