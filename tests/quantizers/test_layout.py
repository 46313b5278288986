"""Memory layouts: flat views in memory order, and every quantizer keeps a channels_last
activation channels_last, with the values and gradients of the contiguous input."""

import contextlib

import pytest
import torch
from tests_helpers import role_for
from torch.utils._python_dispatch import TorchDispatchMode

import nuq
from nuq.quantizers import layout

METHODS = nuq.available_quantizers()


def _cases():
    x = torch.randn(2, 3, 4, 5)
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "transposed": x.transpose(1, 3), "sliced": x[:, :, 1:]}


@pytest.mark.parametrize("case", list(_cases()))
def test_flat_and_unflat_are_inverse_and_views_when_dense(case):
    t = _cases()[case]
    st = layout.layout(t)
    f = layout.flat(t)
    assert f.dim() == 1 and f.is_contiguous()
    back = layout.unflat(f.clone(), t.shape, st)
    assert torch.equal(back, t) and back.stride() == st
    assert (f.data_ptr() == t.data_ptr()) == layout.is_dense(t)  # dense: no copy
    assert layout.is_dense(t) == (case in ("contiguous", "channels_last"))
    g = torch.randn(t.shape)  # another layout than t's, read in t's order
    assert torch.equal(layout.unflat(layout.flat_in(g, st).clone(), t.shape, st), g)


class _NCHWCopies(TorchDispatchMode):
    """Records every op that makes a full-size 4-D tensor in NCHW order (a layout change)."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.ops = torch.Size(shape), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.shape == self.shape and not t.is_contiguous(
                    memory_format=torch.channels_last):
                self.ops.append(str(func))
        return out


def _quantizer(name, signed, x):
    torch.manual_seed(0)
    q = nuq.make_quantizer(name, bits=2, signed=signed, role=role_for(name, signed))
    q.initialize(x if signed else x.relu(), method=q.init_methods[0])
    return q


def _run(fn, x, mode=None):
    xi = x.clone().requires_grad_()
    # an upstream gradient laid out like x, as the layer after a channels_last pass gives
    w = torch.linspace(-1, 1, x.numel()).view(x.shape).contiguous(memory_format=torch.channels_last)
    with mode or contextlib.nullcontext():
        y = fn(xi)
        y.backward(w)
    return y.detach(), xi.grad


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("signed", [False, True])
def test_channels_last_input_gives_channels_last_output_with_the_same_values(name, signed):
    x = torch.randn(4, 8, 6, 6)
    if not signed:
        x = x.relu()
    q = _quantizer(name, signed, x)
    y1, g1 = _run(q, x)
    xc = x.contiguous(memory_format=torch.channels_last)
    seen = _NCHWCopies(x.shape)
    y2, g2 = _run(q, xc, seen)
    assert not seen.ops, f"{name}: converted to NCHW inside the pass ({seen.ops})"
    assert y2.is_contiguous(memory_format=torch.channels_last), f"{name}: the output lost channels_last"
    assert torch.equal(y2, y1)
    assert torch.equal(g2, g1)


@pytest.mark.slow  # one inductor build per method
@pytest.mark.parametrize("name", METHODS)
def test_compiled_quantizer_keeps_channels_last(name):
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(4, 8, 6, 6).relu().contiguous(memory_format=torch.channels_last)
    q = _quantizer(name, False, x)
    y1, g1 = _run(q, x)
    torch._dynamo.reset()
    (y2, g2), code = run_and_get_code(lambda: _run(torch.compile(q, fullgraph=True), x))
    torch._dynamo.reset()
    nchw = f"{tuple(x.shape)}, {torch.empty(x.shape, device='meta').stride()}"
    assert nchw not in "\n".join(code), f"{name}: a full-size buffer in NCHW order in the compiled pass"
    assert y2.is_contiguous(memory_format=torch.channels_last), f"{name}: the compiled output lost channels_last"
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    torch.testing.assert_close(g2, g1, rtol=0, atol=0)
