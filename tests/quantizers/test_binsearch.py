"""The CPU bin-table search equals torch.bucketize(right=True) element for element, and
the quantizers built on it agree exactly with their bucketize path."""

import pytest
import torch

import nuq
from nuq.quantizers import binsearch
from nuq.quantizers.binsearch import MAX_CANDIDATES, MIN_NUMEL, bin_tables, bucket_gather, count_le


def probe(bounds: torch.Tensor, n: int = MIN_NUMEL, seed: int = 0) -> torch.Tensor:
    """Inputs that stress a search: random values over and beyond the range, every boundary,
    its float neighbours on both sides, +-inf, NaN and huge values."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = float(bounds[0]), float(bounds[-1])
    pad = max(hi - lo, 1e-3)
    rnd = torch.rand(n, generator=g, dtype=bounds.dtype) * (hi - lo + 2 * pad) + (lo - pad)
    up = torch.nextafter(bounds, torch.full_like(bounds, float("inf")))
    down = torch.nextafter(bounds, torch.full_like(bounds, -float("inf")))
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 0.0, -0.0], dtype=bounds.dtype)
    return torch.cat([rnd, bounds, up, down, special])[torch.randperm(n + 3 * bounds.numel() + 7, generator=g)]


def check(bounds: torch.Tensor, expect_table: bool = True) -> None:
    x = probe(bounds)
    assert (bin_tables(bounds) is not None) == expect_table
    for right in (True, False):
        ref = torch.bucketize(x, bounds, right=right, out_int32=True)
        got = count_le(x, bounds, right=right)
        assert got.dtype == torch.int32
        assert torch.equal(got, ref)


@pytest.mark.parametrize("n", [3, 7, 15, 31, 63, 255, 300])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_sorted_bounds_equal_bucketize(n, seed):
    g = torch.Generator().manual_seed(seed)
    gaps = torch.rand(n, generator=g) + 0.05
    bounds = torch.cumsum(gaps, 0) - gaps.sum() / 3
    check(bounds)


def test_offset_far_from_zero_uses_the_unfused_coordinate():
    # range 1e-3 around 1000: x * scale + shift would cancel catastrophically
    bounds = 1000.0 + torch.tensor([0.0, 2e-4, 5e-4, 1e-3])
    assert not bin_tables(bounds).fused
    check(bounds)
    assert bin_tables(torch.tensor([0.0, 0.5, 1.0])).fused


@pytest.mark.parametrize("k", range(2, MAX_CANDIDATES + 1))
def test_close_boundaries_several_candidates(k):
    # k boundaries within one bin's window, the rest spread out
    cluster = 0.5 + torch.arange(k, dtype=torch.float32) * 1e-6
    bounds = torch.cat([torch.tensor([0.0, 0.25]), cluster, torch.tensor([0.75, 1.0])])
    assert bin_tables(bounds).cands.shape[0] == k
    check(bounds)


def test_too_many_close_boundaries_fall_back_to_bucketize():
    bounds = torch.cat([torch.tensor([0.0]), 0.5 + torch.arange(MAX_CANDIDATES + 1) * 1e-7, torch.tensor([1.0])])
    check(bounds, expect_table=False)


def test_equal_and_repeated_boundaries():
    check(torch.tensor([0.3, 0.3, 0.3]), expect_table=True)  # one window holds all three
    check(torch.tensor([0.0, 0.5, 0.5, 1.0]))


def test_float64_and_small_inputs():
    bounds = torch.tensor([-1.0, -0.25, 0.5, 2.0], dtype=torch.float64)
    check(bounds)
    x = torch.randn(100, dtype=torch.float64)  # below MIN_NUMEL: the bucketize path
    assert torch.equal(count_le(x, bounds), torch.bucketize(x, bounds, right=True, out_int32=True))


def test_non_finite_bounds_are_not_tabled():
    assert bin_tables(torch.tensor([0.0, float("inf")])) is None
    assert bin_tables(torch.tensor([-3e38, 3e38])) is None  # span overflows


def test_bucket_gather_returns_small_index_and_values():
    bounds = torch.sort(torch.rand(15))[0]
    values = torch.randn(16)
    x = probe(bounds, n=MIN_NUMEL + 12).view(16, -1)  # 15 boundaries: 52 extra probes
    j, y = bucket_gather(x, bounds, values)
    ref = torch.bucketize(x, bounds, right=True)
    assert j.dtype == torch.uint8 and j.shape == x.shape
    assert torch.equal(j.long(), ref)
    assert torch.equal(y, values[ref])
    j16, _ = bucket_gather(probe(torch.arange(300.0)), torch.arange(300.0), None)
    assert j16.dtype == torch.int16


@pytest.mark.parametrize("method", ["n2uq", "lloyd"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_table_path_equals_bucketize_path(method, bits, signed, monkeypatch):
    """Forward and every gradient of a trained-looking N2UQ (resp. Lloyd-level) quantizer
    on a large input are bit-identical with the table search and with bucketize."""
    torch.manual_seed(bits)
    q = nuq.make_quantizer(method, bits=bits, signed=signed)
    x0 = torch.randn(4, 16, 32, 32) * (1.0 if signed else 0.7)
    if not signed:
        x0 = x0.relu()
    q.initialize(x0, method="mse" if method == "n2uq" else q.init_methods[0])
    if method == "n2uq":
        with torch.no_grad():
            q.widths.mul_(torch.rand_like(q.widths) + 0.5)  # unequal widths
    g = torch.randn_like(x0)

    def run():
        x = x0.clone().requires_grad_()
        q.zero_grad()
        y = q(x)
        y.backward(g)
        return [y, x.grad] + [p.grad.clone() for p in q.parameters()]

    tabled = []

    def counting(bounds, *args):
        tabled.append(bin_tables(bounds, *args) is not None)
        return bin_tables(bounds, *args)

    monkeypatch.setattr(binsearch, "bin_tables", counting)
    table = run()
    assert tabled == [True]  # the forward searched with the table
    monkeypatch.setattr(binsearch, "MIN_NUMEL", 1 << 62)
    bucket = run()
    assert tabled == [True]
    for a, b in zip(table, bucket, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("signed", [False, True])
def test_nulsq_table_path_equals_bucketize_path(bits, signed, monkeypatch):
    """nuLSQ forward, gradients and codes on a large input: table search == bucketize."""
    import nuq.quantizers.nulsq as nulsq

    torch.manual_seed(10 + bits)
    q = nuq.make_quantizer("nulsq", bits=bits, signed=signed)
    x0 = torch.randn(4, 16, 32, 32)
    if not signed:
        x0 = x0.relu()
    q.initialize(x0, method="lsq")
    with torch.no_grad():
        for p in q.parameters():
            p.mul_(torch.rand_like(p) + 0.5)  # unequal steps
    g = torch.randn_like(x0)
    tabled = []

    def counting(bounds, *args):
        tabled.append(bin_tables(bounds, *args) is not None)
        return bin_tables(bounds, *args)

    monkeypatch.setattr(nulsq, "bin_tables", counting)

    def run(search):
        x = x0.clone().requires_grad_()
        q.zero_grad()
        with monkeypatch.context() as mp:
            mp.setattr(nulsq, "level_search", lambda *a, f=nulsq.level_search, **kw: f(*a, search=search, **kw))
            y = q(x)
            y.backward(g)
            code = q.encode(x0)
        return [y, x.grad, code] + [p.grad.clone() for p in q.parameters()]

    table = run(True)
    assert tabled == [True, True]  # forward and encode used the table
    bucket = run(False)
    assert tabled == [True, True]
    for a, b in zip(table, bucket, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["n2uq", "nulsq", "lloyd"])
def test_large_inputs_compile_fullgraph(method):
    """Under torch.compile the table (which reads values on the host) is skipped for
    bucketize; the compiled and eager results are the same."""
    q = nuq.make_quantizer(method, bits=3)
    x = torch.rand(MIN_NUMEL * 2) * 2.2
    q.initialize(x, method=q.init_methods[0])
    f = torch.compile(q.quantize, fullgraph=True, backend="eager")
    assert torch.equal(f(x), q(x))
