"""integer_forward: a quantized layer computed from integer codes agrees with the
fake-quantized layer, for the uniform (int32 accumulation), APoT (shift-and-add) and
non-uniform (lookup table) paths."""

import pytest
import torch
from torch import nn

import nuq
from nuq.export import integer_forward, integer_levels, integer_plan
from nuq.nn import QuantConv2d, QuantLinear
from nuq.quantizers.levelsets import additive_terms

#: float32 summation in the fake-quantized reference vs exact integers: relative to max|y|
TOL = 1e-5


def layer_with(kind, w_method, a_method, w_bits=2, a_bits=2, a_signed=False, per_channel=False, **conv):
    torch.manual_seed(0)
    if kind == "conv":
        base = nn.Conv2d(conv.pop("cin", 8), 12, 3, bias=True, **conv)
        cls = QuantConv2d
    else:
        base = nn.Linear(40, 12, bias=True)
        cls = QuantLinear
    wq = nuq.make_quantizer(w_method, bits=w_bits, signed=True, per_channel=per_channel,
                            channels=12 if per_channel else None)
    aq = nuq.make_quantizer(a_method, bits=a_bits, signed=a_signed)
    layer = cls.from_float(base, weight_quantizer=wq, act_quantizer=aq)
    wq.initialize(layer.weight.detach(), method=wq.init_methods[0])
    return layer


def make_input(layer, signed=False):
    g = torch.Generator().manual_seed(1)
    shape = (3, layer.in_channels, 9, 10) if isinstance(layer, nn.Conv2d) else (3, 5, layer.in_features)
    x = torch.randn(shape, generator=g)
    return x if signed else x.relu()


def calibrate(layer, x):
    layer.act_quantizer.initialize(x, method=layer.act_quantizer.init_methods[0])
    return layer.eval()


def check(layer, x):
    with torch.no_grad():
        ref = layer(x)
    got = integer_forward(layer, x)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert (got - ref).abs().max() <= TOL * ref.abs().max()
    return got


@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("a_signed", [False, True])
def test_lsq_is_an_integer_convolution(kind, per_channel, a_signed):
    layer = layer_with(kind, "lsq", "lsq", 3, 2, a_signed=a_signed, per_channel=per_channel)
    x = make_input(layer, a_signed)
    calibrate(layer, x)
    assert integer_plan(layer) == "integer"
    got = check(layer, x)
    # the integer part is exact: the same sum in float64 over the decoded values agrees
    # to float64 rounding (far below the float32 tolerance above)
    with torch.no_grad():
        a = layer.act_quantizer(x).double()
        w = layer.quantized_weight().double()
        b = layer.bias.double()
        exact = nn.functional.conv2d(a, w, b) if kind == "conv" else nn.functional.linear(a, w, b)
    assert (got.double() - exact).abs().max() <= 1e-6 * exact.abs().max()


def test_minmax_8bit_first_layer_with_stride_dilation_groups_reflect():
    layer = layer_with("conv", "minmax", "minmax", 8, 8, a_signed=True, cin=4, stride=2, padding=2, dilation=2,
                       groups=2, padding_mode="reflect")
    x = make_input(layer, signed=True)
    calibrate(layer, x)
    assert integer_plan(layer) == "integer"
    ints, scale, kind = integer_levels(layer.weight_quantizer)
    assert kind == "grid" and ints.min() == -128 and ints.max() == 127
    check(layer, x)


def test_padding_same_and_zero_padding_is_a_true_zero():
    layer = layer_with("conv", "lsq", "lsq", 2, 2, padding="same")
    x = make_input(layer) + 0.5  # all inputs positive: padded zeros must still be zeros
    calibrate(layer, x)
    check(layer, x)


@pytest.mark.skipif("nulsq" not in nuq.available_quantizers(), reason="nulsq not registered")
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_nulsq_uses_the_lookup_table(kind):
    layer = layer_with(kind, "nulsq", "nulsq", 3, 3)
    x = make_input(layer)
    calibrate(layer, x)
    with torch.no_grad():  # non-uniform steps
        for q in (layer.weight_quantizer, layer.act_quantizer):
            for p in q.parameters():
                p.mul_(torch.linspace(0.6, 1.4, p.numel()).view(p.shape))
    assert integer_plan(layer) == "lookup"
    check(layer, x)


@pytest.mark.skipif("nulsq" not in nuq.available_quantizers(), reason="nulsq not registered")
def test_lookup_pads_with_zero_even_when_zero_is_no_level():
    layer = layer_with("conv", "nulsq", "lsq", 2, 2, padding=1)
    x = make_input(layer, signed=True)
    layer.act_quantizer = nuq.make_quantizer("nulsq", bits=2, signed=True)
    calibrate(layer, x)
    with torch.no_grad():
        layer.weight_quantizer.steps_pos.mul_(1.7)
    assert integer_plan(layer) == "lookup"
    check(layer, x)


@pytest.mark.skipif("apot" not in nuq.available_quantizers(), reason="apot not registered")
@pytest.mark.parametrize("w_bits", [3, 4, 5])
def test_apot_weights_multiply_by_shift_and_add(w_bits):
    layer = layer_with("conv", "apot", "lsq", w_bits, 4)
    x = make_input(layer)
    calibrate(layer, x)
    ints, _, kind = integer_levels(layer.weight_quantizer)
    assert kind == "dyadic"
    # APoT levels are sums of n powers of two (signed: the (b-1)-bit set), so each integer
    # has at most n set bits: n shift-adds per multiplication (APoT Sec. 2.2)
    n = additive_terms(w_bits - 1)
    assert max(bin(int(v)).count("1") for v in ints.abs()) <= n
    assert integer_plan(layer) == "shift_add"
    check(layer, x)


@pytest.mark.parametrize("method", nuq.available_quantizers())
def test_every_method_has_some_integer_path(method):
    """Whatever the tables, integer_forward agrees with the layer (the generic lookup
    path at worst)."""
    try:
        layer = layer_with("conv", "lsq", method, 2, max(2, nuq.quantizers.quantizer_class(method).min_bits))
        w_layer = layer_with("linear", method, "lsq", max(2, nuq.quantizers.quantizer_class(method).min_bits), 2)
    except ValueError as e:
        pytest.skip(f"{method}: {e}")
    for lay in (layer, w_layer):
        x = make_input(lay)
        try:
            calibrate(lay, x)
        except ValueError as e:
            pytest.skip(f"{method}: {e}")
        assert integer_plan(lay) in ("integer", "shift_add", "lookup")
        check(lay, x)


def test_needs_both_quantizers():
    layer = layer_with("linear", "lsq", "lsq")
    layer.act_quantizer = None
    with pytest.raises(ValueError, match="both a weight and an activation quantizer"):
        integer_forward(layer, torch.randn(2, 40))
    with pytest.raises(ValueError, match="unsupported layer type Linear"):
        integer_forward(nn.Linear(3, 3), torch.randn(2, 3))
