"""N2UQ activation quantizer (Eq. 11-13), its weight quantizer F_Q, against independent
per-element implementations of the paper's equations."""

import math

import pytest
import torch
from tests_helpers import MODES, run_quantizer

import nuq
from nuq.quantizers.n2uq import WIDTH_FLOOR


def ref_n2uq(x, s, a, b1, b2, signed):
    """Per element: Eq. 12 forward on x' = b1 x, G-STE Eq. 11 / Eq. 13 and the chain rule
    through beta_1, beta_2. Returns y and dQ/d(x, s, a_1..a_m, beta_1, beta_2) per element."""
    m = len(a)
    c = 2.0 / m
    off = 1.0 if signed else 0.0
    d = [s]
    for ai in a:
        d.append(d[-1] + ai)
    ys, dx, ds, da, db1, db2 = [], [], [], [], [], []
    for xi in x.tolist():
        xp = b1 * xi
        q = 0  # Eq. 12: level i once x' reaches d_{i-1} + a_i / 2
        for i in range(1, m + 1):
            if xp >= d[i - 1] + a[i - 1] / 2:
                q = i
        ys.append(b2 * (c * q - off))
        db2.append(c * q - off)
        k = next((i for i in range(1, m + 1) if d[i - 1] <= xp < d[i]), None)  # Eq. 11 interval
        if k is None:
            dx.append(0.0)
            ds.append(0.0)
            da.append([0.0] * m)
            db1.append(0.0)
            continue
        ak = a[k - 1]
        dx.append(b2 * c * b1 / ak)
        ds.append(-b2 * c / ak)
        db1.append(b2 * c * xi / ak)
        row = []
        for i in range(1, m + 1):  # Eq. 13
            if i == k:
                row.append(-b2 * c * (xp - d[k - 1]) / ak**2)
            elif i < k:
                row.append(-b2 * c / ak)
            else:
                row.append(0.0)
        da.append(row)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return t(ys), t(dx), t(ds), t(da), t(db1), t(db2)


def _make(bits, signed, s, a, b1, b2, grad_scale=None):
    q = nuq.make_quantizer("n2uq", bits=bits, signed=signed, grad_scale=grad_scale).double()
    q.start.data.fill_(s)
    q.widths.data.copy_(torch.tensor(a, dtype=torch.float64))
    q.scale_in.data.fill_(b1)
    q.scale_out.data.fill_(b2)
    q.mark_initialized()
    return q


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("grad_scale", [None, "lsq"])
@pytest.mark.parametrize("mode", MODES)
def test_n2uq_matches_per_element_reference(bits, signed, grad_scale, mode):
    m = 2**bits - 1
    gen = torch.Generator().manual_seed(bits + 10 * signed)
    a = (torch.rand(m, generator=gen, dtype=torch.float64) * 0.5 + 0.05).tolist()
    s = -0.9 if signed else 0.1
    b1, b2 = 1.3, 0.7
    q = _make(bits, signed, s, a, b1, b2, grad_scale)
    n = 400
    hi = (s + sum(a)) / b1
    x = (s / b1 - 0.3 + torch.rand(n, generator=gen, dtype=torch.float64) * (hi - s / b1 + 0.6)).requires_grad_()
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    y = run_quantizer(q, x, mode)
    (y * g).sum().backward()
    ry, rdx, rds, rda, rdb1, rdb2 = ref_n2uq(x.detach(), s, a, b1, b2, signed)
    torch.testing.assert_close(y.detach(), ry, atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad, g * rdx, atol=1e-12, rtol=1e-12)
    gs = 1.0 if grad_scale is None else 1.0 / math.sqrt(n * q.qp)
    tol = dict(atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(q.start.grad, (g * rds).sum() * gs, **tol)
    torch.testing.assert_close(q.widths.grad, (g[:, None] * rda).sum(0) * gs, **tol)
    torch.testing.assert_close(q.scale_in.grad, (g * rdb1).sum() * gs, **tol)
    torch.testing.assert_close(q.scale_out.grad, (g * rdb2).sum() * gs, **tol)


def test_n2uq_matches_autograd_of_the_gste_surrogate():
    """Official-code style: forward value + (E - E.detach()), E = sum_i clip((x' - d_{i-1})/a_i, 0, 1)."""
    q = _make(3, False, 0.05, [0.1, 0.3, 0.2, 0.25, 0.4, 0.15, 0.3], 1.1, 0.9)
    x = torch.rand(2000, dtype=torch.float64) * 2.2 - 0.1
    xq = x.clone().requires_grad_()
    q(xq).sum().backward()
    p = {k: v.detach().clone().requires_grad_() for k, v in q.named_parameters()}
    xr = x.clone().requires_grad_()
    xp = xr * p["scale_in"]
    d = torch.cat([p["start"].view(1), p["start"] + p["widths"].cumsum(0)])
    e = ((xp[:, None] - d[None, :-1]) / p["widths"]).clamp(0, 1).sum(1)
    level = (xp.detach()[:, None] >= (d[:-1] + p["widths"] / 2).detach()).sum(1).double()
    y = p["scale_out"] * (2 / 7) * (level + e - e.detach())
    y.sum().backward()
    torch.testing.assert_close(xq.grad, xr.grad, atol=1e-12, rtol=1e-12)
    for k, v in q.named_parameters():
        torch.testing.assert_close(v.grad, p[k].grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_equal_widths_degenerate_to_ste(bits):
    """All a_i equal: N2UQ is a uniform quantizer with the plain STE (unit slope inside)."""
    m = 2**bits - 1
    w, b1 = 0.37, 1.6
    q = _make(bits, False, 0.0, [w] * m, b1, w * m / (2 * b1))  # beta_2 * (2/m) = w / beta_1
    step = w / b1
    x = (torch.rand(1000, dtype=torch.float64) * (m + 2) - 1) * step
    x = x[((x / step) - (x / step).floor() - 0.5).abs() > 1e-6].requires_grad_()  # no rounding ties
    y = q(x)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), (x.detach() / step).round().clamp(0, m) * step, atol=1e-12, rtol=0)
    inside = (x.detach() >= 0) & (x.detach() < m * step)
    torch.testing.assert_close(x.grad, inside.double(), atol=1e-12, rtol=0)
    # and the same as LSQ with that step (whose STE passes x in (0, m*step])
    lsq = nuq.make_quantizer("lsq", bits=bits).double()
    lsq.step.data.fill_(step)
    lsq.mark_initialized()
    torch.testing.assert_close(lsq(x.detach()), y.detach(), atol=1e-12, rtol=0)


def test_widths_at_or_below_floor_are_finite_and_get_no_gradient():
    q = _make(2, False, 0.0, [0.5, WIDTH_FLOOR, -0.2], 1.0, 1.0).float()
    x = (torch.rand(1000) * 1.2 - 0.1).requires_grad_()
    y = q(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(q.widths.grad).all() and q.widths.grad[0] != 0
    assert q.widths.grad[1] == 0 and q.widths.grad[2] == 0
    for n, p in q.named_parameters():
        assert torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("signed", [False, True])
def test_init_values(signed):
    q = nuq.make_quantizer("n2uq", bits=3, signed=signed)
    assert q.start.item() == (-1.0 if signed else 0.0)
    torch.testing.assert_close(q.widths.data, torch.full((7,), 2 / 7))
    assert q.scale_in.item() == 1.0 and q.scale_out.item() == 1.0
    x = torch.randn(20000) if signed else torch.randn(20000).relu()
    errs = {}
    for method in ("lsq", "mse"):
        q.initialize(x, method=method)
        # beta_1 * beta_2 = 1: Q(x) ~ x inside the range
        assert q.scale_in.item() * q.scale_out.item() == pytest.approx(1.0, rel=1e-6)
        errs[method] = (q(x) - x).pow(2).mean().item()
    assert errs["lsq"] < 0.1 * x.pow(2).mean().item()
    assert errs["mse"] <= errs["lsq"] * 1.01
    q.initialize(x, method="const")
    assert q.scale_in.item() == 1.0


def test_signed_levels_exclude_zero_and_match_f_q_at_init():
    q = nuq.make_quantizer("n2uq", bits=2, signed=True)
    q.mark_initialized()
    torch.testing.assert_close(q.levels(), torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    fq = nuq.make_quantizer("n2uq_w", bits=2, signed=True)
    x = torch.randn(1000) * 1.5
    torch.testing.assert_close(q(x), fq(x), atol=1e-6, rtol=0)


def test_widths_shape_mismatch_in_checkpoint_is_a_clear_error():
    q3 = nuq.make_quantizer("n2uq", bits=3)
    q2 = nuq.make_quantizer("n2uq", bits=2)
    with pytest.raises(RuntimeError, match="widths"):
        q2.load_state_dict(q3.state_dict())


def test_inherit_from_more_bits_keeps_range_and_output():
    q3 = _make(3, False, 0.1, [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4], 1.2, 0.8)
    q2 = nuq.make_quantizer("n2uq", bits=2).double()
    q2.inherit(q3)
    d3, d2 = q3.thresholds(), q2.thresholds()
    torch.testing.assert_close(d2[[0, -1]], d3[[0, -1]])
    # d_new_i = E_old^-1(i * 7/3): e.g. d_1 sits 1/3 into old interval 3
    torch.testing.assert_close(d2[1], d3[2] + (7 / 3 - 2) * 0.3)
    assert q2.scale_out.item() == 0.8 and q2.scale_in.item() == 1.2
    same = nuq.make_quantizer("n2uq", bits=3).double()
    same.inherit(q3)
    torch.testing.assert_close(same.widths.data, q3.widths.data)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    q = nuq.make_quantizer("n2uq", bits=3)
    q.mark_initialized()
    x = (torch.rand(4, 100) * 2.4 - 0.2).to(dtype).requires_grad_()
    y = q(x)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    assert torch.isin(y.float(), q.levels().to(dtype).float()).all()


def test_compiles_fullgraph():
    q = nuq.make_quantizer("n2uq", bits=2)
    q.mark_initialized()
    x = torch.rand(64) * 2.2
    f = torch.compile(q.quantize, fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), q(x), atol=0, rtol=0)


# --- the weight quantizer F_Q ------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_quantizer_f_q(bits):
    m = 2**bits - 1
    q = nuq.make_quantizer("n2uq_w", bits=bits, signed=True)
    lv = q.levels()
    torch.testing.assert_close(lv, torch.tensor([-1 + 2 * i / m for i in range(m + 1)]))
    assert not (lv == 0).any() and len(lv) == 2**bits
    w = (torch.randn(3000) * 0.8).requires_grad_()
    y = q(w)
    ref = torch.tensor([round((min(max(v, -1), 1) + 1) * m / 2) * 2 / m - 1 for v in w.tolist()])
    torch.testing.assert_close(y.detach(), ref, atol=1e-6, rtol=0)
    y.sum().backward()
    torch.testing.assert_close(w.grad, (w.detach().abs() <= 1).float(), atol=0, rtol=0)
