"""prepare(): layer swapping on two model families, layer policy, calibration."""

import copy
import importlib.util
import sys

import pytest
import torch
from tests_helpers import needs_data
from torch import nn

import nuq
from nuq.nn import QuantConv2d, QuantLinear


def resnet():
    return nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)


def mlp():
    return nuq.create_model("mlp", num_classes=10, in_channels=1, hidden=32)


def calib(n=2):
    return [torch.randn(8, 1, 28, 28) for _ in range(n)]


@pytest.mark.parametrize("factory", [resnet, mlp])
def test_prepare_swaps_every_layer_and_trains(factory):
    model = factory()
    n_float = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    q = nuq.prepare(model, nuq.QATConfig(w_bits=2, a_bits=2), calib=calib())
    layers = dict(nuq.quant_layers(q))
    assert len(layers) == n_float
    # the original is untouched (copy by default)
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in model.modules())
    names = list(layers)
    first, last = layers[names[0]], layers[names[-1]]
    assert first.weight_quantizer.method == "minmax" and first.weight_quantizer.bits == 8
    assert first.act_quantizer.signed  # normalised images are signed
    assert last.weight_quantizer.method == "minmax"
    mid = layers[names[1]]
    assert mid.weight_quantizer.method == "lsq" and mid.weight_quantizer.bits == 2
    assert not mid.act_quantizer.signed  # post-ReLU input
    assert all(bool(qz.initialized) for _, qz in nuq.named_quantizers(q))
    out = q(torch.randn(4, 1, 28, 28))
    out.sum().backward()
    assert all(p.grad is not None for _, qz in nuq.named_quantizers(q) for p in qz.parameters())


def test_prepared_layer_equals_manual_fake_quant():
    model = mlp()
    q = nuq.prepare(model, nuq.QATConfig(w_bits=3, a_bits=3, first_last="same"), calib=calib())
    layer = dict(nuq.quant_layers(q))["3"]
    x = torch.rand(5, 32)
    expect = nn.functional.linear(layer.act_quantizer(x), layer.weight_quantizer(layer.weight), layer.bias)
    torch.testing.assert_close(layer(x), expect, atol=0, rtol=0)


def test_calibration_leaves_batchnorm_untouched():
    model = resnet()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    q = nuq.prepare(model, nuq.QATConfig(w_bits=2, a_bits=2), calib=calib(3))
    after = q.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert q.training  # mode restored


def test_layer_policy_skip_float_first_last_downsample_override():
    cfg = nuq.QATConfig(w_bits=2, a_bits=2, first_last="float", quantize_downsample=False,
                        skip=("layers.0.*",), overrides={"layers.8.conv2": {"w_bits": 4, "a_bits": 3}})
    q = nuq.prepare(resnet(), cfg)
    layers = dict(nuq.quant_layers(q))
    assert "conv1" not in layers and "fc" not in layers
    assert not any(n.startswith("layers.0.") for n in layers)
    assert not any("shortcut" in n for n in layers)
    assert layers["layers.8.conv2"].weight_quantizer.bits == 4
    assert layers["layers.8.conv2"].act_quantizer.bits == 3
    assert layers["layers.8.conv1"].weight_quantizer.bits == 2


def test_state_dict_is_strict_and_round_trips():
    cfg = nuq.QATConfig(w_bits=2, a_bits=2)
    q = nuq.prepare(resnet(), cfg, calib=calib())
    q2 = nuq.prepare(resnet(), cfg, signed_inputs=nuq.signed_inputs(q))
    q2.load_state_dict(q.state_dict())
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(q2.eval()(x), q.eval()(x), atol=0, rtol=0)
    sd = q.state_dict()
    sd.pop("layers.1.conv1.act_quantizer.step")
    with pytest.raises(RuntimeError, match="act_quantizer.step"):
        q2.load_state_dict(sd)


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": "nope"}, "unknown quantizer method"),
    ({"w_bits": 1}, "w_bits"),
    ({"a_bits": 99}, "a_bits"),
    ({"first_last": "16bit"}, "first_last"),
    ({"w_init": "magic"}, "w_init"),
    ({"overrides": {"x": {"bitz": 3}}}, "bitz"),
])
def test_bad_config_is_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nuq.QATConfig(**kwargs)


def test_nan_calibration_batch_is_rejected():
    bad = torch.randn(4, 1, 28, 28)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nuq.prepare(mlp(), nuq.QATConfig(), calib=[bad])


def test_auto_weight_transform_follows_the_paper():
    layers = dict(nuq.quant_layers(nuq.prepare(mlp(), nuq.QATConfig(weight="apot", act="apot", w_bits=3, a_bits=3))))
    names = list(layers)
    assert type(layers[names[1]].weight_transform).__name__ == "APoTWeightNorm"
    assert layers[names[0]].weight_transform is None  # 8-bit first layer
    q = nuq.prepare(mlp(), nuq.QATConfig(weight="lsq", weight_transform="auto"))
    assert all(m.weight_transform is None for _, m in nuq.quant_layers(q))


@pytest.mark.parametrize("method", nuq.available_quantizers())
def test_every_method_prepares_and_trains(method):
    x = torch.randn(8, 1, 28, 28)
    q = nuq.prepare(mlp(), nuq.QATConfig(weight=method, act=method, w_bits=2, a_bits=2, first_last="same"),
                    calib=[x])
    out = q(x)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    for n, p in q.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def test_activation_init_uses_float_model_inputs():
    """Weight normalization rescales conv outputs; the activation ranges still come from
    the float model, so a W2A2 APoT net is not dead at the start of training."""
    model = resnet()
    x = [torch.randn(16, 1, 28, 28)]
    q = nuq.prepare(model, nuq.QATConfig(weight="apot", act="apot", w_bits=2, a_bits=2), calib=x)
    ref = nuq.prepare(model, nuq.QATConfig(weight="lsq", act="apot", w_bits=2, a_bits=2), calib=x)
    for (n, a), (_, b) in zip(nuq.quant_layers(q), nuq.quant_layers(ref)):
        if a.act_quantizer is not None and a.act_quantizer.method == "apot":
            torch.testing.assert_close(a.act_quantizer.alpha, b.act_quantizer.alpha, msg=n)
    out = q.train()(torch.randn(4, 1, 28, 28))
    assert out.std(0).mean() > 1e-3  # outputs depend on the input


class _OwnMHA(torch.nn.MultiheadAttention):
    """A subclass: split_attention leaves it alone, so its out_proj never runs as a module."""


class _AttnNet(torch.nn.Module):
    """Attention, and ``side`` whose weight a functional reads."""

    def __init__(self, mha=torch.nn.MultiheadAttention):
        super().__init__()
        nn_ = torch.nn
        self.inp, self.fc, self.side = nn_.Linear(8, 16), nn_.Linear(16, 4), nn_.Linear(16, 16)
        self.attn = mha(16, 2, batch_first=True)

    def forward(self, x):
        h = self.inp(x)
        h, _ = self.attn(h, h, h)
        h = h + torch.nn.functional.linear(h, self.side.weight)
        return self.fc(h.mean(1))


def test_layers_that_never_run_are_refused_by_name():
    model, calib = _AttnNet(_OwnMHA), [torch.randn(4, 5, 8)]
    with pytest.raises(ValueError, match=r"attn\.out_proj are never called as modules.*skip=\['attn.out_proj'\]"):
        nuq.prepare(model, nuq.QATConfig())  # known owner: refused even without calibration data
    with pytest.raises(ValueError, match=r"attn\.out_proj, side are never called"):
        nuq.prepare(model, nuq.QATConfig(), calib=calib)
    q = nuq.prepare(model, nuq.QATConfig(skip=("*.out_proj", "side")), calib=calib)
    # what is quantized now runs: changing a quantizer changes the output
    y = q.eval()(calib[0])
    q.inp.act_quantizer.range.mul_(3)  # the first layer (8-bit minmax)
    assert not torch.equal(q(calib[0]), y)


def test_multihead_attention_is_split_and_quantized(tmp_path):
    """nn.MultiheadAttention becomes four Linear projections that run (same float function),
    each quantized; training moves their quantizers, and the packed file and ONNX agree."""
    from nuq.export import load_packed, save_packed
    from nuq.nn.attention import SplitMultiheadAttention, split_attention

    torch.manual_seed(0)
    model, x = _AttnNet(), torch.randn(4, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(split_attention(copy.deepcopy(model)).eval()(x), model.eval()(x),
                                   rtol=1e-6, atol=1e-6)
    q = nuq.prepare(model, nuq.QATConfig(weight="lsq", act="lsq", w_bits=4, a_bits=4, skip=("side",)), calib=[x])
    assert isinstance(q.attn, SplitMultiheadAttention)
    layers = dict(nuq.quant_layers(q))
    assert {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj"} <= set(layers)
    q.train()(x).square().mean().backward()
    assert all(layers[f"attn.{p}_proj"].weight_quantizer.step.grad.abs() > 0 for p in "qkv")
    y = q.eval()(x)
    with torch.no_grad():
        layers["attn.v_proj"].weight_quantizer.step.mul_(2)
    assert not torch.equal(q(x), y)
    save_packed(q, tmp_path / "m.nuq.safetensors")
    back = load_packed(tmp_path / "m.nuq.safetensors", model=_AttnNet())
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    if importlib.util.find_spec("onnxruntime") is not None:
        from nuq.export import to_onnx

        assert to_onnx(q, x, tmp_path / "m.onnx", verify=True)["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("kw,match", [
    ({"skip": "layers.0*"}, r"skip='layers.0\*' \(str\); allowed: a list of strings"),
    ({"per_channel": "false"}, r"per_channel='false' \(str\); allowed: true/false"),
    ({"skip": ("nomatch*",)}, r"skip pattern 'nomatch\*' matches no Conv2d/Linear layer"),
    ({"overrides": {"nolayer": {"w_bits": 3}}}, r"overrides pattern 'nolayer' matches no"),
    ({"weight_kwargs": {"clipp": "max"}}, r"weight_kwargs has unknown key\(s\) 'clipp' for 'apot'; allowed: k, clip"),
])
def test_wrong_policy_values_are_errors(kw, match):
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)
    with pytest.raises(ValueError, match=match):
        nuq.prepare(model, nuq.QATConfig(weight="apot", act="apot", w_bits=3, a_bits=3, **kw))


@pytest.fixture(scope="module")
def shipped_and_data():
    from nuq.data import load_dataset

    test = load_dataset("fashion_mnist", None, train=False).subset(300, seed=0)
    train = load_dataset("fashion_mnist", None, train=True).subset(128, seed=0)
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist", width=16).eval()
    x, y = test.normalize(test.images), test.labels
    with torch.no_grad():
        ref = (model(x).argmax(1) == y).float().mean().item()
    return model, [train.normalize(train.images)], x, y, ref


@needs_data
@pytest.mark.parametrize("method", nuq.available_quantizers())
def test_w8a8_eval_right_after_prepare_is_close_to_float(method, shipped_and_data):
    """Weight transforms (APoT's weight normalization, DoReFa's tanh, N2UQ's scale) change the
    conv outputs' scale; BatchNorm's statistics are measured again, so eval mode stays right
    (APoT W8A8 scored 11% here without it). Lloyd runs at 4 bits: fitting 256 levels costs
    half a minute and tests nothing more."""
    model, calib, x, y, ref = shipped_and_data
    w = {"n2uq": "n2uq_w"}.get(method, method)
    a = {"n2uq_w": "n2uq"}.get(method, method)
    bits = 4 if method == "lloyd" else 8
    q = nuq.prepare(model, nuq.QATConfig(weight=w, act=a, w_bits=bits, a_bits=bits), calib=calib).eval()
    with torch.no_grad():
        acc = (q(x).argmax(1) == y).float().mean().item()
    assert acc > ref - 0.03, (acc, ref)


def _small_then_bn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        net[0].weight.mul_(1e-3)  # training-mode BatchNorm renormalises this; eval mode with unit stats does not
    return net


def test_untrained_batchnorm_calibrates_on_batch_statistics():
    """An untrained model trains on batch statistics: calibrating its activation quantizers
    in eval mode (running stats mean 0, var 1) saw inputs 1000x too small here (and 1e-11 in
    an untrained EfficientNet-B0, whose first training step then had 1e24 gradients)."""
    net, x = _small_then_bn(), torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        train_input = net[:3].train()(x)  # what the second conv sees in training
    net = _small_then_bn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    q = nuq.prepare(net, nuq.QATConfig(weight="lsq", act="lsq", w_bits=4, a_bits=4, first_last="same"), calib=[x])
    ref = nuq.make_quantizer("lsq", bits=4, signed=False)
    ref.initialize(train_input.reshape(-1), method="mse")
    assert torch.allclose(q[3].act_quantizer.step, ref.step, rtol=0.05)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the input model is untouched
    assert all(torch.equal(q.state_dict()[k], before[k]) for k in before if "running" in k or "tracked" in k)
    # a trained model (running statistics measured) still calibrates in eval mode
    trained = _small_then_bn()
    with torch.no_grad():
        trained.train()(x)
    prep = sys.modules["nuq.prepare"]  # nuq.prepare is the function
    assert not prep.untrained_batchnorms(trained) and len(prep.untrained_batchnorms(_small_then_bn())) == 2
