"""Quantizers under bf16/fp16: the arithmetic runs in float32 inside, so a low-precision
input quantizes to the levels float32 computes for the same values (rounded once to the
input dtype), and the gradients are float32's."""

import pytest
import torch
from tests_helpers import MODES, role_for, run_quantizer

import nuq

METHODS = nuq.available_quantizers()


def _pair(name, bits, signed, dtype):
    torch.manual_seed(bits + 10 * signed)
    q = nuq.make_quantizer(name, bits=bits, signed=signed, role=role_for(name, signed))
    x = torch.randn(8, 16, 12, 12) * 1.5
    if not signed:
        x = x.relu()
    q.initialize(x, method=q.init_methods[0])
    xl = x.to(dtype)  # what a convolution under autocast hands the next layer's quantizer
    g = torch.randn(x.shape).to(dtype)
    return q, xl, g


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("dtype, mode", [(torch.bfloat16, m) for m in MODES] + [(torch.float16, "eager")])
def test_low_precision_input_matches_float32(name, bits, signed, dtype, mode):
    q, xl, g = _pair(name, bits, signed, dtype)
    a = xl.clone().requires_grad_()
    y = run_quantizer(q, a, mode)
    y.backward(g)
    grads = [None if p.grad is None else p.grad.clone() for p in q.parameters()]
    q.zero_grad()
    b = xl.float().requires_grad_()
    y32 = q(b)
    y32.backward(g.float())
    assert y.dtype == dtype and a.grad.dtype == dtype
    assert torch.equal(y, y32.to(dtype))  # the same level, rounded once
    assert torch.equal(a.grad, b.grad.to(dtype))
    tol = 1e-6 if mode == "eager" else 2e-5  # compiled: other float32 summation orders
    for p, gl in zip(q.parameters(), grads):
        assert gl.dtype == p.dtype == torch.float32
        torch.testing.assert_close(gl, p.grad, rtol=tol, atol=tol)
