"""nuLSQ against an independent per-element implementation of the supplement's Eq. 5
(forward) and Eq. 10-11 with their mirror image on the negative side (backward)."""

import math

import pytest
import torch
from tests_helpers import MODES, run_quantizer

import nuq
from nuq.quantizers.nulsq import _search_cpu, midpoints, nearest_level


def make(bits, signed, grad_scale=None, steps=None, dtype=torch.float64):
    q = nuq.make_quantizer("nulsq", bits=bits, signed=signed, grad_scale=grad_scale).to(dtype)
    if steps is not None:
        set_steps(q, *steps)
    q.mark_initialized()
    return q


def set_steps(q, pos, neg=None):
    with torch.no_grad():
        if q.signed:
            q.steps_pos.copy_(torch.as_tensor(pos, dtype=torch.float64))
            q.steps_neg.copy_(torch.as_tensor(neg, dtype=torch.float64))
        else:
            q.steps.copy_(torch.as_tensor(pos, dtype=torch.float64))


def step_grads(q):
    return (q.steps_pos.grad, q.steps_neg.grad) if q.signed else (q.steps.grad, None)


def ref_nulsq(x, pos, neg):
    """Forward Eq. 5 as a sum of unit steps; dQ/ds_k by Eq. 10-11; dQ/ds'_k(x) = -D_k(-x)
    with the s' steps below the bottom level and in the mirrored intervals."""
    c = [0.0]
    for s in pos:
        c.append(c[-1] + s)
    cn = [0.0]
    for s in neg:
        cn.append(cn[-1] + s)
    ys, dxs, dps, dns = [], [], [], []
    for xi in x.tolist():
        # sigma(0) = 1 on both sides (exact ties: test_ties_round_away_from_zero)
        y = sum(s for n, s in enumerate(pos, 1) if xi - c[n] + s / 2 >= 0)
        y -= sum(s for n, s in enumerate(neg, 1) if -xi - cn[n] + s / 2 >= 0)
        ys.append(y)
        dxs.append(1.0 if -cn[-1] < xi <= c[-1] else 0.0)
        dp = []
        for k, s in enumerate(pos, 1):
            if c[k - 1] < xi <= c[k]:  # Eq. 11
                dp.append((1.0 if xi - c[k] + s / 2 >= 0 else 0.0) - (xi - c[k - 1]) / s)
            else:  # Eq. 10: 1 above the top level, 0 elsewhere
                dp.append(1.0 if xi > c[-1] else 0.0)
        dn = []
        v = -xi
        for k, s in enumerate(neg, 1):
            if cn[k - 1] <= v < cn[k]:  # x in (-c'_k, -c'_{k-1}]
                dn.append(-((1.0 if v - cn[k] + s / 2 >= 0 else 0.0) - (v - cn[k - 1]) / s))
            else:
                dn.append(-1.0 if v >= cn[-1] else 0.0)
        dps.append(dp)
        dns.append(dn)
    def t(v):
        return torch.tensor(v, dtype=x.dtype)

    return t(ys), t(dxs), t(dps), t(dns).reshape(len(ys), -1)


def random_steps(bits, signed, gen):
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    pos = (0.1 + torch.rand(n, generator=gen, dtype=torch.float64)).tolist()
    neg = (0.1 + torch.rand(2 ** (bits - 1), generator=gen, dtype=torch.float64)).tolist() if signed else []
    return pos, neg


def probe_points(lv, gen, n=300):
    """Random points over and beyond the range, plus points a hair off every threshold
    (not on it: the rounding of an exact tie differs by convention) and every level."""
    lo, hi = lv[0].item(), lv[-1].item()
    span = hi - lo
    x = lo - 0.3 * span + 1.6 * span * torch.rand(n, generator=gen, dtype=torch.float64)
    thr = (lv[1:] + lv[:-1]) / 2
    eps = 1e-9 * span
    return torch.cat([x, thr - eps, thr + eps, lv, lv - eps, lv + eps, torch.tensor([0.0], dtype=torch.float64)])


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("grad_scale", [None, "lsq"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(bits, signed, grad_scale, mode):
    gen = torch.Generator().manual_seed(bits * 10 + signed)
    pos, neg = random_steps(bits, signed, gen)
    q = make(bits, signed, grad_scale, (pos, neg))
    x = probe_points(q.levels(), gen).requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    y = run_quantizer(q, x, mode)
    (y * g).sum().backward()
    ry, rdx, rdp, rdn = ref_nulsq(x.detach(), pos, neg)
    torch.testing.assert_close(y.detach(), ry, atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad, g * rdx, atol=0, rtol=0)
    scale = 1.0 if grad_scale is None else 1.0 / math.sqrt(x.numel() * q.qp)
    gp, gn = step_grads(q)
    torch.testing.assert_close(gp, (g[:, None] * rdp).sum(0) * scale, atol=1e-10, rtol=1e-10)
    if signed:
        torch.testing.assert_close(gn, (g[:, None] * rdn).sum(0) * scale, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_equal_steps_match_lsq(bits, signed):
    s = 0.375  # exact in binary, so every level and midpoint is exact
    q = make(bits, signed)
    with torch.no_grad():
        for p in q.parameters():
            p.fill_(s)
    lsq = nuq.make_quantizer("lsq", bits=bits, signed=signed, grad_scale=q.grad_scale).double()
    lsq.step.data.fill_(s)
    lsq.mark_initialized()
    x = torch.randn(2000, dtype=torch.float64) * 2 * (2 ** (bits - 1)) * s
    g = torch.randn(2000, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = q(x1), lsq(x2)
    torch.testing.assert_close(y1, y2, atol=0, rtol=0)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=0, rtol=0)
    total = sum(p.grad.sum() for p in q.parameters())
    torch.testing.assert_close(total, lsq.step.grad, atol=1e-9, rtol=1e-12)


def test_cpu_search_equals_bucketize():
    gen = torch.Generator().manual_seed(1)
    for bits in range(2, 9):
        lv = torch.sort(torch.randn(2**bits, generator=gen)).values
        lv[3] = lv[2]  # a closed interval: equal thresholds
        thr = (lv[1:] + lv[:-1]) * 0.5
        special = torch.tensor([float("nan"), float("inf"), -float("inf")])
        x = torch.cat([torch.randn(5000, generator=gen) * 3, thr, special])
        ref = torch.bucketize(x, thr, right=True)
        assert torch.equal((_search_cpu(x, thr, bits) ^ (2**bits - 1)).long(), ref)
        k, table, _ = nearest_level(x, lv, bits)
        assert torch.equal(table[k], lv[torch.bucketize(x, midpoints(lv), right=True)])


@pytest.mark.parametrize("bits", [2, 5, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_encode_decode_exact(bits, signed):
    gen = torch.Generator().manual_seed(bits)
    q = make(bits, signed, steps=random_steps(bits, signed, gen), dtype=torch.float32)
    x = torch.randn(3, 7, 11, generator=gen) * q.levels().abs().max() * 0.7
    codes = q.encode(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    with torch.no_grad():
        torch.testing.assert_close(q.decode(codes), q(x), atol=0, rtol=0)
    assert int(codes.max()) <= 2**bits - 1


def test_levels_and_parameter_shapes():
    q = make(2, True, steps=([0.5], [0.25, 1.0]))
    assert q.steps_pos.shape == (1,) and q.steps_neg.shape == (2,)
    assert q.levels().tolist() == [-1.25, -0.25, 0.0, 0.5]
    u = make(3, False)
    assert u.steps.shape == (7,) and u.levels().shape == (8,)
    with pytest.raises(ValueError, match="per_channel"):
        nuq.make_quantizer("nulsq", bits=2, per_channel=True)


def test_init_methods():
    x = torch.randn(5000)
    q = nuq.make_quantizer("nulsq", bits=3, signed=True)
    q.initialize(x, method="lsq")
    expect = 2 * x.abs().mean() / math.sqrt(3)
    for p in q.parameters():
        torch.testing.assert_close(p.data, expect.expand(p.shape))
    q.initialize(x, method="mse")
    lsq = nuq.make_quantizer("lsq", bits=3, signed=True)
    lsq.initialize(x, method="mse")
    for p in q.parameters():
        torch.testing.assert_close(p.data, lsq.step.data.expand(p.shape))
    q.initialize(x, method="const")
    assert torch.all(q.steps_pos == 1 / 3) and torch.all(q.steps_neg == 1 / 3)
    q = nuq.make_quantizer("nulsq", bits=2, init_value=0.2)
    q.initialize(x.relu(), method="const")
    assert torch.all(q.steps == 0.2)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="init_value"):
            nuq.make_quantizer("nulsq", bits=2, init_value=bad)


def is_subset(new, old):
    return bool(((new[:, None] - old[None, :]).abs().min(1).values <= 1e-12 * old.abs().max()).all())


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_progressive_merge(bits, signed):
    gen = torch.Generator().manual_seed(bits)
    hi = make(bits + 1, signed, steps=random_steps(bits + 1, signed, gen))
    lo = make(bits, signed)
    lo.inherit(hi)
    assert bool(lo.initialized)
    assert is_subset(lo.levels(), hi.levels())
    same = make(bits, signed)
    same.inherit(lo)
    torch.testing.assert_close(same.levels(), lo.levels(), atol=0, rtol=0)
    for k in (1, 2):  # from LSQ of the same and one more bit
        lsq = nuq.make_quantizer("lsq", bits=bits + k - 1, signed=signed).double()
        lsq.step.data.fill_(0.3)
        fresh = make(bits, signed)
        fresh.inherit(lsq)
        assert is_subset(fresh.levels(), lsq.levels())


def test_merge_values_and_errors():
    hi = make(3, False, steps=([1.0, 2, 3, 4, 5, 6, 7],))
    lo = make(2, False)
    lo.inherit(hi)
    assert lo.steps.tolist() == [3.0, 7.0, 11.0]  # the outermost step 7 is dropped
    hi = make(3, True, steps=([1.0, 2, 3], [1.0, 2, 3, 4]))
    lo = make(2, True)
    lo.inherit(hi)
    assert lo.steps_pos.tolist() == [3.0] and lo.steps_neg.tolist() == [3.0, 7.0]
    # a step pushed below zero is merged as the floored step the source really used
    hi = make(3, False, steps=([1.0, -2, 3, 4, 5, 6, 7],))
    lo = make(2, False)
    lo.inherit(hi)
    assert is_subset(lo.levels(), hi.levels())
    with pytest.raises(ValueError, match="bits"):
        make(2, False).inherit(make(4, False))
    with pytest.raises(ValueError, match="bits"):
        make(3, False).inherit(make(2, False))
    with pytest.raises(ValueError, match="signed"):
        make(2, False).inherit(make(3, True))
    with pytest.raises(ValueError, match="MinMax"):
        make(2, False).inherit(nuq.make_quantizer("minmax", bits=3))
    with pytest.raises(ValueError, match="per-tensor lsq"):
        make(2, True).inherit(nuq.make_quantizer("lsq", bits=3, signed=True, per_channel=True, channels=4))


def test_checkpoint_of_other_bits_is_a_clear_error():
    q3 = make(3, False)
    q2 = make(2, False)
    with pytest.raises(RuntimeError, match="another bit width"):
        q2.load_state_dict(q3.state_dict())
    with pytest.raises(RuntimeError, match="steps_pos"):
        make(2, True).load_state_dict(q2.state_dict())


@pytest.mark.parametrize("signed", [False, True])
def test_degenerate_steps_stay_finite(signed):
    bits = 3
    n_pos = 3 if signed else 7
    pos = [-1.0, 0.0, 1e-30] + [0.5] * (n_pos - 3)
    neg = [0.0, 0.0, -2.0, 0.5] if signed else None
    q = make(bits, signed, steps=(pos, neg), dtype=torch.float32)
    x = torch.cat([torch.randn(500), torch.zeros(10), q.levels()]).requires_grad_()
    y = q(x)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    gp, gn = step_grads(q)
    assert torch.isfinite(gp).all()
    assert gp[0] == 0 and gp[1] == 0  # below the floor: no gradient (clamp_min)
    if signed:
        assert torch.isfinite(gn).all() and gn[2] == 0
    # every output is a level, and the level table stays sorted
    lv = q.levels()
    assert torch.all(lv[1:] >= lv[:-1]) and torch.isin(y.detach(), lv).all()


def test_all_steps_at_floor_and_huge_inputs():
    q = make(4, True, dtype=torch.float32)
    with torch.no_grad():
        for p in q.parameters():
            p.fill_(0.0)
    x = torch.tensor([-1e30, -1.0, 0.0, 1e-9, 1.0, 1e30, float("inf"), -float("inf")], requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in q.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_input_dtype(dtype):
    q = make(3, True, dtype=torch.float32)
    q.initialize(torch.randn(1000))
    for xdt in (torch.float32, dtype):
        x = torch.randn(4, 16, dtype=xdt, requires_grad=True)
        with torch.autocast("cpu", dtype=dtype):
            y = q(x)
        assert y.dtype == xdt
        y.float().sum().backward()
        assert x.grad.dtype == xdt
        assert q.steps_pos.grad.dtype == torch.float32 and torch.isfinite(q.steps_pos.grad).all()
        # every output is a level of the table, rounded to the input dtype
        assert torch.isin(y.detach().float(), q.levels().to(xdt).float()).all()


@pytest.mark.slow  # inductor's CPU compile takes about a minute on 2 shared cores
def test_torch_compile_fullgraph():
    q = make(3, True, dtype=torch.float32)
    q.initialize(torch.randn(1000))
    x = torch.randn(8, 64)
    g = torch.randn(8, 64)

    def step(module, inp):
        inp = inp.clone().requires_grad_()
        module.zero_grad()
        out = module(inp)
        out.backward(g)
        return out.detach(), inp.grad, [p.grad.clone() for p in module.parameters()]

    compiled = torch.compile(q, fullgraph=True, backend="inductor")
    y1, gx1, gp1 = step(q, x)
    y2, gx2, gp2 = step(compiled, x)
    torch.testing.assert_close(y2, y1, atol=0, rtol=0)
    torch.testing.assert_close(gx2, gx1, atol=0, rtol=0)
    for a, b in zip(gp2, gp1):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bucketize_path_matches_cpu_search(monkeypatch):
    """The bucketize path (used off CPU) gives the same outputs and gradients."""
    import nuq.quantizers.nulsq as mod

    gen = torch.Generator().manual_seed(3)
    q = make(3, True, "lsq", random_steps(3, True, gen), dtype=torch.float32)
    x = torch.randn(2000, generator=gen) * 2
    g = torch.randn(2000, generator=gen)
    results = []
    for search in (True, False):
        monkeypatch.setattr(mod, "level_search", lambda *a, s=search, f=mod.level_search, **kw: f(*a, search=s, **kw))
        q.zero_grad()
        xr = x.clone().requires_grad_()
        y = q(xr)
        y.backward(g)
        results.append((y.detach(), xr.grad, q.steps_pos.grad.clone(), q.steps_neg.grad.clone(), q.encode(x)))
        monkeypatch.undo()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
def test_ties_round_away_from_zero(bits, dtype, mode):
    """Eq. 5 with sigma(0) = 1 on both sides: a value exactly on a threshold takes the level
    away from zero, so with mirrored steps Q(-x) = -Q(x) holds at the ties too."""
    gen = torch.Generator().manual_seed(bits)
    pos, _ = random_steps(bits, True, gen)
    neg = pos + [0.37]  # the negative side mirrors the positive one, plus its extra level
    q = make(bits, True, steps=(pos, neg), dtype=dtype)
    lv = q.levels().to(dtype)
    thr = (lv[1:] + lv[:-1]) * 0.5
    y = run_quantizer(q, thr.clone(), mode).detach()
    away = torch.where(thr > 0, lv[1:], lv[:-1])
    assert torch.equal(y, away)
    top = thr[thr > 0]
    assert torch.equal(run_quantizer(q, -top, mode).detach(), -run_quantizer(q, top, mode).detach())
    assert torch.equal(q.decode(q.encode(thr)), away)
