"""Operation / size accounting on hand-computed networks, Table 1 of the APoT paper
(uniform rows of ResNet-18), and the clipping / projection error split of Eq. 14."""

import pytest
import torch
from torch import nn

import nuq
from nuq.analysis.accounting import count_model, quantization_error
from nuq.nn import QuantConv2d, QuantLinear
from nuq.quantizers import make_quantizer


def q(name, bits, signed, value=None):
    quant = make_quantizer(name, bits=bits, signed=signed)
    for p in quant.parameters():
        p.data.fill_(value if value is not None else 0.5)
    quant.mark_initialized()
    return quant


class Tiny(nn.Module):
    """conv 1->2, 3x3, pad 1 on 4x4 (32 outputs x 9 = 288 MACs), BN, ReLU, linear 32->3 (96 MACs)."""

    def __init__(self, conv_w=None, conv_a=None, fc_w=None, fc_a=None, plain=False):
        super().__init__()
        if plain:
            self.conv, self.fc = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(32, 3)
        else:
            self.conv = QuantConv2d(1, 2, 3, padding=1, weight_quantizer=conv_w, act_quantizer=conv_a)
            self.fc = QuantLinear(32, 3, weight_quantizer=fc_w, act_quantizer=fc_a)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_tiny_quantized_network_by_hand():
    model = Tiny(q("apot", 4, True), q("uniform", 4, False), q("lsq", 3, True), q("lsq", 2, False))
    c = count_model(model, (2, 1, 4, 4))  # batch 2: counts are per sample
    conv, fc = c.layers
    assert (conv.name, conv.macs, fc.name, fc.macs) == ("conv", 288, "fc", 96)
    # APoT 4-bit signed weight = sign + 3-bit magnitude = 2 PoT terms (Eq. 6): 2 shift-adds of a 4-bit input
    assert conv.scheme == "shift-add" and conv.pot_terms == 2
    assert conv.bitops == 288 * 2 * 4 and conv.fixops == 288 * 2 * 4 / 64
    # uniform 3-bit x 2-bit: 6 binary ops per MAC
    assert fc.scheme == "uniform" and fc.bitops == 96 * 3 * 2 and fc.fixops == 96 * 6 / 64
    assert c.macs == 384 and c.flops == 0 and c.fixops == 36 + 9 and c.bitops == 2304 + 576
    # size: conv weight 18 x 4 bit, fc weight 96 x 3 bit; conv bias 2, bn 4, fc bias 3 and
    # 4 quantizer scalars at 32 bit
    assert c.params == 18 + 96 + 2 + 4 + 3 + 4
    assert c.size_bits == 18 * 4 + 96 * 3 + (2 + 4 + 3 + 4) * 32
    assert c.size_mb == pytest.approx(c.size_bits / 8e6)
    assert "total" in c.table() and c.as_dict()["fixops"] == 45


def test_float_and_mixed_layers():
    c = count_model(Tiny(plain=True), (1, 1, 4, 4))
    assert c.flops == 384 and c.fixops == 384 and c.bitops == 384 * 32 * 32
    assert c.size_bits == (18 + 2 + 4 + 96 + 3) * 32
    # a float activation or a non-uniform (Lloyd) weight makes the multiply a float one;
    # a PoT weight needs one shift-add per multiply
    lloyd = make_quantizer("lloyd", bits=3, signed=True, role="weight")
    lloyd.initialize(torch.randn(500), method="lloyd")
    c = count_model(Tiny(q("pot", 3, True), None, lloyd, q("uniform", 3, False)), (1, 1, 4, 4))
    conv, fc = c.layers
    assert conv.scheme == "float" and conv.flops == 288
    assert fc.scheme == "float" and fc.w_scheme == "non-uniform" and fc.flops == 96
    c = count_model(Tiny(q("pot", 3, True), q("pact", 5, False), None, None), (1, 1, 4, 4))
    assert c.layers[0].scheme == "shift-add" and c.layers[0].bitops == 288 * 1 * 5


def test_counting_leaves_the_model_untouched():
    act = make_quantizer("minmax", bits=8, signed=True, observer="dynamic")  # updates on every call
    act.range.fill_(5.0)
    act.mark_initialized()
    model = Tiny(q("lsq", 4, True), act, None, None)
    model.train()
    model.fc.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_model(model, (1, 1, 4, 4))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and model.conv.training and not model.fc.training


def test_shared_layer_counts_every_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    c = count_model(Twice(), (1, 4))
    assert len(c.layers) == 1 and c.macs == 32 and c.params == 20


def test_bad_input_shape():
    for bad in [(16,), (0, 1, 4, 4)]:
        with pytest.raises(ValueError, match="input_shape"):
            count_model(Tiny(plain=True), bad)


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class _ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (He et al., 2016), ImageNet head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        spec = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.layers = nn.Sequential(*[b for i, o, s in spec for b in (_Block(i, o, s), _Block(o, o, 1))])
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        return self.fc(self.layers(self.pool(torch.relu(self.bn1(self.conv1(x))))).mean((2, 3)))


def test_resnet18_reproduces_table1_uniform_rows():
    model = _ResNet18()
    c = count_model(model, (1, 3, 224, 224))
    # Table 1, FP ResNet-18: 46.8 MB, 1.82G FLOPs
    assert c.size_mb == pytest.approx(46.8, abs=0.05)
    assert c.flops == pytest.approx(1.82e9, rel=0.005)
    # 4/4 uniform with 8-bit first and last layers (Sec. 4.1): 542M FixOPs
    qm = nuq.prepare(model, nuq.QATConfig(weight="lsq", act="lsq", w_bits=4, a_bits=4, first_last="8bit"))
    c4 = count_model(qm, (1, 3, 224, 224))
    assert c4.fixops == pytest.approx(542e6, rel=0.002)
    # the same model at 5/5 (781M), from the same per-layer MACs
    fix5 = sum(x.macs * (1 if x.w_bits == 8 else 25 / 64) for x in c4.layers)
    assert fix5 == pytest.approx(781e6, rel=0.002)


def test_quantization_error_split_eq14():
    quant = q("uniform", 3, True, value=1.0)  # levels {0, +-1/3, +-2/3, +-1}
    x = torch.tensor([0.1, -0.3, 0.5, 1.5, -2.0, 0.9], dtype=torch.float64)
    e = quantization_error(x, quant)
    clip = ((1.5 - 1) ** 2 + (2.0 - 1) ** 2) / 6
    proj = ((0.1 - 0) ** 2 + (0.3 - 1 / 3) ** 2 + (0.5 - 2 / 3) ** 2 + (0.9 - 1) ** 2) / 6
    assert e["clip"] == pytest.approx(clip, rel=1e-6) and e["proj"] == pytest.approx(proj, rel=1e-6)
    assert e["total"] == pytest.approx(e["mse"], rel=1e-6)


def test_quantization_error_per_channel_and_unsigned():
    quant = make_quantizer("apot", bits=3, signed=False)
    quant.alpha.data.fill_(2.0)
    quant.mark_initialized()
    x = torch.tensor([-1.0, 0.0, 3.0])
    e = quantization_error(x, quant)
    assert e["clip"] == pytest.approx((1.0 + 1.0) / 3) and e["proj"] == 0.0
    pc = make_quantizer("lsq", bits=2, signed=True, per_channel=True, channels=2)
    pc.step.data.copy_(torch.tensor([0.1, 1.0]))
    pc.mark_initialized()
    e = quantization_error(torch.tensor([[0.5, 0.0], [0.5, 0.0]]), pc)
    # channel 0 range [-0.2, 0.1]: 0.5 clipped by 0.4; channel 1 range [-2, 1]: 0.5 -> 0 or 1
    assert e["clip"] == pytest.approx(0.16 / 4, rel=1e-5) and e["proj"] == pytest.approx(0.25 / 4, rel=1e-5)
