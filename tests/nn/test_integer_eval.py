"""Eval-mode integer arithmetic of QuantConv2d / QuantLinear (nuq.nn.integer_eval)."""

import pytest
import torch
import torch.nn.functional as F

import nuq
from nuq.nn import QuantConv2d, QuantLinear
from nuq.nn.integer_eval import integer_operands
from nuq.quantizers import make_quantizer
from nuq.quantizers.grid import level_grid


def conv_layer(act="lsq", weight="lsq", bits=2, cin=16, bias=False, per_channel=False):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, 8, 3, padding=1, bias=bias)
    wq = make_quantizer(weight, bits=bits, signed=True, per_channel=per_channel,
                        channels=8 if per_channel else None)
    aq = make_quantizer(act, bits=bits, signed=False)
    layer = QuantConv2d.from_float(conv, weight_quantizer=wq, act_quantizer=aq)
    x = torch.randn(4, cin, 9, 9).relu()
    wq.initialize(conv.weight.detach(), wq.init_methods[0])
    aq.initialize(x, aq.init_methods[0])
    with torch.no_grad():  # off the initial (round) values
        for p in list(wq.parameters()) + list(aq.parameters()):
            p.mul_(torch.linspace(0.83, 1.17, p.numel()).view(p.shape))
    return layer.eval(), x


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_eval_is_the_integer_convolution_times_one_scale(bias, per_channel):
    layer, x = conv_layer(bias=bias, per_channel=per_channel)
    a_ints, s_a = level_grid(layer.act_quantizer.levels().detach())
    w_ints, s_w = level_grid(layer.weight_quantizer.levels().detach())
    k_a = a_ints[layer.act_quantizer.encode(x).long()].double()
    k_w = w_ints[layer.weight_quantizer.encode(layer.weight).long()].double()
    acc = F.conv2d(k_a, k_w, padding=1)  # float64: exact for these small integers
    s = (s_a * s_w).float()
    ref = acc.float() * (s.view(1, -1, 1, 1) if s.dim() else s)
    if bias:
        ref = ref + layer.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        out = layer(x)
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
        layer.integer_eval = False  # the fake-quant float path: the same up to float32 rounding
        torch.testing.assert_close(layer(x), out, atol=1e-5, rtol=1e-5)


def test_eval_output_does_not_depend_on_summation_order():
    """Permuting the input channels permutes the terms of every sum: the integer path gives
    the same bits, which no float32 convolution promises."""
    layer, x = conv_layer(cin=64)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    permuted = QuantConv2d.from_float(torch.nn.Conv2d(64, 8, 3, padding=1, bias=False),
                                      weight_quantizer=layer.weight_quantizer, act_quantizer=layer.act_quantizer)
    with torch.no_grad():
        permuted.weight.copy_(layer.weight[:, perm])
        torch.testing.assert_close(permuted.eval()(x[:, perm]), layer(x), atol=0, rtol=0)


def test_weight_integers_are_cached_until_the_weight_changes():
    layer, x = conv_layer()
    with torch.no_grad():
        first = layer(x)
        cached = layer._integer_weight_cache
        assert torch.equal(layer(x), first) and layer._integer_weight_cache is cached  # reused
        layer.weight.mul_(-1)  # in place: the next eval forward must see it
        out = layer(x)
        layer.integer_eval = False
        torch.testing.assert_close(out, layer(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out, first)


def test_linear_with_extra_leading_axes():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 5)
    layer = QuantLinear.from_float(lin, weight_quantizer=make_quantizer("lsq", bits=3, signed=True),
                                   act_quantizer=make_quantizer("lsq", bits=3, signed=False)).train()
    x = torch.randn(6, 7, 32).relu()
    layer(x)  # lazy init
    layer.eval()
    with torch.no_grad():
        ops = integer_operands(layer, x)
        assert ops is not None
        ref = F.linear(ops.act.double(), ops.weight.double()).float() * ops.scale + layer.bias
        torch.testing.assert_close(layer(x), ref, atol=0, rtol=0)


@pytest.mark.parametrize("act,weight", [("nulsq", "lsq"), ("lsq", "nulsq"), ("lcq", "lcq")])
def test_non_grid_tables_keep_the_float_path(act, weight):
    layer, x = conv_layer(act=act, weight=weight)
    assert integer_operands(layer, x) is None
    with torch.no_grad():
        ref = layer._conv_forward(layer.act_quantizer(x), layer.weight_quantizer(layer.weight), None)
        torch.testing.assert_close(layer(x), ref, atol=0, rtol=0)


def test_training_other_dtypes_and_large_sums_keep_the_float_path():
    layer, x = conv_layer()
    assert integer_operands(layer, x) is not None
    assert integer_operands(layer.train(), x) is None
    layer.eval()
    assert integer_operands(layer, x.double()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert integer_operands(layer, x) is None
    # 8-bit x 8-bit over 1024 inputs: 1024 * 128 * 128 = 2^24, no longer exact in float32
    lin = QuantLinear.from_float(torch.nn.Linear(1024, 2),
                                 weight_quantizer=make_quantizer("minmax", bits=8, signed=True, role="weight"),
                                 act_quantizer=make_quantizer("minmax", bits=8, signed=True, observer="running"))
    x = torch.randn(3, 1024)
    lin.train()(x)
    assert integer_operands(lin.eval(), x) is None
    lin.in_features = 1023
    lin.weight = torch.nn.Parameter(lin.weight[:, :1023].detach())
    assert integer_operands(lin, x[:, :1023]) is not None


@pytest.mark.parametrize("method", ["lsq", "pact", "dorefa", "n2uq", "minmax"])
def test_uniform_output_methods_take_the_integer_path(method):
    """Every method whose levels are an integer grid (checked, not declared) runs on integers."""
    layer, x = conv_layer(act=method, weight="n2uq_w" if method == "n2uq" else "lsq", bits=3)
    assert integer_operands(layer, x) is not None


def test_prepared_resnet_eval_matches_float_path():
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)
    calib = torch.randn(16, 1, 28, 28)
    q = nuq.prepare(model, nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2), calib=[calib]).eval()
    with torch.no_grad():
        out = q(calib)
        for _, layer in nuq.quant_layers(q):
            layer.integer_eval = False
        ref = q(calib)
    # the same numbers up to float32 rounding, except where a value within rounding of a
    # threshold lands on the neighbouring level (rare: a few of the 16 x 10 logits at most)
    close = (out - ref).abs() <= 1e-4 * (1 + ref.abs())
    assert close.float().mean() >= 0.9
