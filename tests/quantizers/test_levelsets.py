"""Level sets of the APoT paper against its worked examples (Sec. 2.2, Eq. 6) and properties."""

import itertools

import pytest
import torch

from nuq.quantizers.levelsets import (
    additive_terms,
    apot_levels,
    level_set,
    lloyd_levels,
    pot_levels,
    signed_levels,
    uniform_levels,
)

F64 = torch.float64


def sums(*term_sets):
    return sorted({sum(c) for c in itertools.product(*term_sets)})


def test_apot_4bit_matches_section_2_2():
    # p0 in {0, 2^0, 2^-2, 2^-4}, p1 in {0, 2^-1, 2^-3, 2^-5}, gamma = 2 alpha / 3
    p0 = [0, 1, 2**-2, 2**-4]
    p1 = [0, 2**-1, 2**-3, 2**-5]
    ref = torch.tensor(sums(p0, p1), dtype=F64) * (2 / 3)
    lv = apot_levels(4)
    torch.testing.assert_close(lv, ref, atol=1e-15, rtol=0)
    # "the smallest positive quantization level in Q^a(1, 4) is 2^-4 / 3"
    assert lv[1].item() == pytest.approx(2**-4 / 3, abs=1e-15)
    # "APoT generates 3 new quantization levels between 2^0 and 2^-1"
    assert int(((lv > 0.5) & (lv < 1.0)).sum()) == 3


def test_apot_3bit_matches_eq6_example():
    # "every level is a sum of one p0 and one p~, p0 in {0, 2^-1, 2^-2, 2^-4}, p~ in {0, 2^-3}"
    raw = torch.tensor(sums([0, 2**-1, 2**-2, 2**-4], [0, 2**-3]), dtype=F64)
    torch.testing.assert_close(apot_levels(3), raw / raw.max(), atol=1e-15, rtol=0)


def test_uniform_and_pot_small_sets():
    torch.testing.assert_close(uniform_levels(2), torch.tensor([0, 1 / 3, 2 / 3, 1], dtype=F64))
    # Eq. 2 signed, b = 3: {0, +-1/3, +-2/3, +-1}
    torch.testing.assert_close(level_set("uniform", 3, signed=True),
                               torch.tensor([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1], dtype=F64))
    torch.testing.assert_close(pot_levels(2), torch.tensor([0, 0.25, 0.5, 1], dtype=F64))
    torch.testing.assert_close(level_set("pot", 3, signed=True),
                               torch.tensor([-1, -0.5, -0.25, 0, 0.25, 0.5, 1], dtype=F64))


def test_apot_5bit_eq6_structure():
    # n = 2: p_i in {0, 2^-i, 2^-(i+2), 2^-(i+5)}, p~ in {0, 2^-4}
    raw = torch.tensor(sums([0, 1, 2**-2, 2**-5], [0, 2**-1, 2**-3, 2**-6], [0, 2**-4]), dtype=F64)
    torch.testing.assert_close(apot_levels(5), raw / raw.max(), atol=1e-15, rtol=0)


@pytest.mark.parametrize("kind", ["uniform", "pot", "apot"])
def test_two_bit_signed_is_ternary(kind):
    torch.testing.assert_close(level_set(kind, 2, signed=True), torch.tensor([-1.0, 0.0, 1.0], dtype=F64))


@pytest.mark.parametrize("kind", ["uniform", "pot", "apot"])
@pytest.mark.parametrize("bits", range(2, 9))
def test_properties(kind, bits):
    lv = level_set(kind, bits)
    assert lv.dtype == F64 and lv.dim() == 1
    assert lv.numel() == 2**bits
    assert torch.isfinite(lv).all()
    assert torch.all(lv[1:] > lv[:-1])  # sorted and distinct
    assert lv[0] == 0 and lv.max() == 1
    s = level_set(kind, bits, signed=True)
    assert s.numel() == 2**bits - 1
    assert torch.isfinite(s).all() and torch.all(s[1:] > s[:-1])
    torch.testing.assert_close(s, -s.flip(0), atol=0, rtol=0)
    assert s.max() == 1 and s.min() == -1


def test_k1_is_uniform_and_kb_is_pot():
    # Sec. 2.2: k = 1 gives fixed-point (uniform) levels, k = b gives PoT
    for b in (2, 4, 6):
        torch.testing.assert_close(apot_levels(b, k=1), uniform_levels(b), atol=1e-15, rtol=0)
        torch.testing.assert_close(apot_levels(b, k=b), pot_levels(b), atol=0, rtol=0)


def test_additive_terms():
    assert [additive_terms(b) for b in range(1, 9)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_bad_arguments():
    for bad in (0, 9, 2.0, True, "4"):
        with pytest.raises(ValueError, match="bits"):
            apot_levels(bad)
    with pytest.raises(ValueError, match="k="):
        apot_levels(5, k=3)
    with pytest.raises(ValueError, match="kind"):
        level_set("lloyd", 3)
    with pytest.raises(ValueError):
        signed_levels(torch.tensor([0.5, 1.0]))


def test_lloyd_gaussian_matches_lloyd_max():
    # known 2-bit Lloyd-Max quantizer of N(0, 1): +-0.4528, +-1.510
    x = torch.randn(65536, generator=torch.Generator().manual_seed(1))
    lv = lloyd_levels(x, 2, iters=100)
    torch.testing.assert_close(lv, torch.tensor([-1.510, -0.4528, 0.4528, 1.510], dtype=F64), atol=0.03, rtol=0)


def test_lloyd_include_zero_and_mse():
    x = torch.randn(20000).abs()
    lv = lloyd_levels(x, 3, include_zero=True)
    assert lv.numel() == 8 and (lv == 0).any() and torch.all(lv[1:] >= lv[:-1])

    def mse(levels):
        idx = torch.bucketize(x.double(), (levels[1:] + levels[:-1]) / 2)
        return (levels[idx] - x.double()).pow(2).mean()

    # beats the uniform grid over the same range
    assert mse(lv) < mse(uniform_levels(3) * float(lv.max()))
    with pytest.raises(ValueError, match="NaN"):
        lloyd_levels(torch.tensor([1.0, float("nan")]), 2)
