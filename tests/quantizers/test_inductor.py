"""Every registered quantizer compiled by inductor inside a small quantized model: one graph
(fullgraph), the same outputs and gradients as eager, and no opaque search, scatter or
fake-quant kernel left in the generated code where the unrolled forms apply (b <= 4)."""

import copy

import pytest
import torch
from torch import nn

import nuq

METHODS = nuq.available_quantizers()
#: kernels that would end inductor's fusion inside a quantizer pass
OPAQUE = ("bucketize", "index_add", "scatter_add", "fake_quantize", "aten.dot", "searchsorted", "cumsum")


def _model(weight, act):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    calib = [torch.randn(16, 3, 6, 6)]
    cfg = nuq.QATConfig(weight=weight, act=act, w_bits=2, a_bits=2, first_last="same")
    return nuq.prepare(net, cfg, calib=calib).train()


def _step(model, x, g):
    model.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    y = model(xi)
    y.backward(g)
    grads = {k.removeprefix("_orig_mod."): p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return y.detach(), xi.grad, grads


@pytest.mark.slow  # one inductor build per method (a few seconds each on 2 cores)
@pytest.mark.parametrize("name", METHODS)
def test_compiled_model_matches_eager_and_fuses(name):
    from torch._inductor.utils import run_and_get_code

    weight_ok = name not in ("n2uq",)  # N2UQ's activation quantizer is meant for activations
    model = _model(name if weight_ok else "n2uq_w", name)
    x, g = torch.randn(16, 3, 6, 6), torch.randn(16, 10)
    twin = copy.deepcopy(model)  # observers (minmax) update state on every call: start both alike
    y1, gx1, gp1 = _step(model, x, g)
    torch._dynamo.reset()
    compiled = torch.compile(twin, fullgraph=True)
    (y2, gx2, gp2), code = run_and_get_code(lambda: _step(compiled, x, g))
    torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx2, gx1, rtol=1e-4, atol=1e-4)
    assert gp1.keys() == gp2.keys()
    for k in gp1:
        torch.testing.assert_close(gp2[k], gp1[k], rtol=2e-3, atol=2e-3, msg=k)
    src = "\n".join(code)
    assert not [op for op in OPAQUE if op in src], f"{name}: opaque kernels in the compiled graph"
    if name == "lcq":  # its passes are custom operators called from inside the one graph (lcq.py)
        assert "nuq.lcq_quantize" in src and "nuq.lcq_backward" in src


@pytest.mark.slow  # one inductor build per method
@pytest.mark.parametrize("name", METHODS)
def test_compiled_quantizer_keeps_nan_and_the_eager_gradient(name):
    """Compiled, the NaN test is ``x != x`` (inductor scalarises isnan): NaN still comes out
    where it went in, and every other element's output and input gradient equal eager's."""
    from tests_helpers import role_for

    torch.manual_seed(0)
    q = nuq.make_quantizer(name, bits=2, role=role_for(name, False))
    x = torch.randn(4, 8, 6, 6).relu()
    q.initialize(x, method=q.init_methods[0])
    if q.dynamic:  # a range measured on the tensor is NaN itself: nothing to compare elementwise
        pytest.skip(f"{name} measures its range on the input")
    bad = x.clone()
    bad[0, 0, 0, :2] = float("nan")
    outs = []
    for fn in (q, torch.compile(q, fullgraph=True)):
        xi = bad.clone().requires_grad_()
        y = fn(xi)
        y.nan_to_num(0.0).sum().backward()  # a finite loss: the gradient of the other elements
        outs.append((y.detach(), xi.grad))
        torch._dynamo.reset()
    (y1, g1), (y2, g2) = outs
    assert torch.isnan(y2[0, 0, 0, :2]).all() and torch.isnan(y2).sum() == 2
    torch.testing.assert_close(y2, y1, equal_nan=True)
    torch.testing.assert_close(g2, g1, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unrolled_prefix_sums_are_cumsum_bit_for_bit(dtype):
    """The compiled level tables' prefix sums round like CPU cumsum (which adds float32 in
    float64): a float32 running sum would differ in the last bit on some tables."""
    from nuq.quantizers.unrolled import prefix_sums

    torch._dynamo.reset()
    fn = torch.compile(prefix_sums, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    for n in (1, 3, 7, 15, 31):
        for _ in range(20):
            t = (torch.rand(n, generator=g, dtype=torch.float64) * torch.rand(1, generator=g, dtype=torch.float64) * 10)
            t = t.to(dtype)
            assert torch.equal(fn(t), torch.cumsum(t, 0)), n
