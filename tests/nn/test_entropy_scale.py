"""N2UQ entropy-preserving weight regularization (appendix A) followed by F_Q."""

import math

import pytest
import torch

from nuq.nn.transforms import available_transforms, make_transform
from nuq.quantizers import make_quantizer


def test_registered_and_validated():
    assert "n2uq_entropy" in available_transforms()
    with pytest.raises(ValueError, match="bits"):
        make_transform("n2uq_entropy", bits=0)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_formula_per_filter(bits):
    w = torch.randn(8, 4, 3, 3) * torch.rand(8, 1, 1, 1)
    t = make_transform("n2uq_entropy", bits=bits)
    out = t(w)
    for o in range(8):
        wf = w[o]
        ref = 2 ** (bits - 1) / (2**bits - 1) * wf.numel() / wf.abs().sum() * wf
        torch.testing.assert_close(out[o], ref)
    lin = torch.randn(5, 7)
    torch.testing.assert_close(t(lin).abs().mean(1), torch.full((5,), 2 ** (bits - 1) / (2**bits - 1)))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gaussian_weights_use_all_levels_with_high_entropy(bits):
    w = torch.randn(64, 32, 3, 3) * 0.02
    q = make_quantizer("n2uq_w", bits=bits, signed=True)
    codes = q.encode(make_transform("n2uq_entropy", bits=bits)(w)).long()
    for o in (0, 17, 63):  # every filter, not only the whole tensor
        p = torch.bincount(codes[o].reshape(-1), minlength=2**bits).double() / codes[o].numel()
        assert (p > 0).all()
    p = torch.bincount(codes.reshape(-1), minlength=2**bits).double() / codes.numel()
    assert (p > 0).all()
    entropy = -(p * p.log2()).sum().item()
    assert entropy >= 0.95 * bits
    # without the regularization the small weights collapse onto the two innermost levels
    raw = torch.bincount(q.encode(w).long().reshape(-1), minlength=2**bits).double() / w.numel()
    assert -(raw[raw > 0] * raw[raw > 0].log2()).sum().item() < 1.01 * math.log2(2)


def test_detached_scale_by_default():
    w = torch.randn(4, 6, requires_grad=True)
    t = make_transform("n2uq_entropy", bits=2)
    g = torch.randn(4, 6)
    (t(w) * g).sum().backward()
    torch.testing.assert_close(w.grad, g * t.scale(w.detach()))
    w.grad = None
    t2 = make_transform("n2uq_entropy", bits=2, detach=False)
    (t2(w) * g).sum().backward()
    assert not torch.allclose(w.grad, g * t2.scale(w.detach()))
    zero = torch.zeros(2, 3)
    assert torch.isfinite(t(zero)).all()
