"""prepare() beyond our ResNets: a depthwise-separable (MobileNet-style) net always, and
torchvision / timm architectures where those packages are installed."""

import importlib.util

import pytest
import torch
from torch import nn

import nuq
from nuq.nn import QuantConv2d, QuantLinear


class DepthwiseNet(nn.Module):
    """Stem conv, inverted-residual-like blocks with depthwise (groups = channels) 3x3
    convs and ReLU6, a pooled Dropout + Linear classifier -- MobileNetV2's layer types."""

    def __init__(self, in_channels=3, num_classes=10, width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6())
        blocks = []
        for _ in range(2):
            blocks += [nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU6(),
                       nn.Conv2d(2 * width, 2 * width, 3, 1, 1, groups=2 * width, bias=False),
                       nn.BatchNorm2d(2 * width), nn.ReLU6(),
                       nn.Conv2d(2 * width, width, 1, bias=False), nn.BatchNorm2d(width)]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, num_classes))

    def forward(self, x):
        x = self.features(self.stem(x))
        return self.classifier(x.mean((2, 3)))


def check_prepared(model, x, first, last, methods=(("lsq", "lsq"), ("nulsq", "nulsq"), ("apot", "apot"))):
    """prepare + forward + backward for each method; first/last layers at 8 bits; eval runs."""
    for w, a in methods:
        q = nuq.prepare(model, nuq.QATConfig(weight=w, act=a, w_bits=2, a_bits=2), calib=[x])
        layers = dict(nuq.quant_layers(q))
        assert all(type(m) in (QuantConv2d, QuantLinear) for m in layers.values())
        for name in (first, last):
            assert layers[name].weight_quantizer.method == "minmax" and layers[name].weight_quantizer.bits == 8
        inner = [m for n, m in layers.items() if n not in (first, last)]
        assert inner and all(m.weight_quantizer.method == w and m.weight_quantizer.bits == 2 for m in inner)
        out = q.train()(x)
        out.square().mean().backward()
        assert all(p.grad is not None for _, qz in nuq.named_quantizers(q) for p in qz.parameters()
                   if p.requires_grad and qz.method == w)
        with torch.no_grad():
            assert torch.isfinite(q.eval()(x)).all()
    return q


def test_depthwise_separable_net():
    x = torch.randn(8, 3, 32, 32)
    q = check_prepared(DepthwiseNet(), x, "stem.0", "classifier.1")
    dw = q.features[3]
    assert isinstance(dw, QuantConv2d) and dw.groups == dw.in_channels == 16


def test_depthwise_net_exports_to_integer_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from nuq.export import to_onnx

    x = torch.randn(8, 3, 32, 32)
    q = nuq.prepare(DepthwiseNet(), nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2), calib=[x])
    info = to_onnx(q, x, tmp_path / "dw.onnx", verify=True)
    assert all(v["act"].startswith("integer-") for v in info["layers"].values())  # grouped ConvInteger too
    assert info["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("arch,first,last", [("resnet18", "conv1", "fc"), ("resnet50", "conv1", "fc"),
                                             ("mobilenet_v2", "features.0.0", "classifier.1")])
def test_torchvision(arch, first, last):
    pytest.importorskip("torchvision")
    model = nuq.create_model(f"torchvision.{arch}", num_classes=10)
    check_prepared(model, torch.randn(2, 3, 64, 64), first, last, methods=(("lsq", "lsq"),))
    one = nuq.create_model(f"torchvision.{arch}", num_classes=10, in_channels=1)
    assert one(torch.randn(2, 1, 64, 64)).shape == (2, 10)


#: (model, kwargs, input size, layers that never run as modules and must be refused)
FAMILY = [
    ("torchvision.resnet18", {}, 64, ()),
    ("torchvision.mobilenet_v2", {}, 64, ()),
    ("torchvision.efficientnet_b0", {}, 64, ()),
    ("torchvision.vit_b_16", {"image_size": 32}, 32, ()),  # nn.MultiheadAttention, split into Linear modules
    ("torchvision.swin_t", {}, 64, ("*.attn.qkv", "*.attn.proj")),  # weights passed to a functional
    ("timm.convnext_atto", {}, 64, ()),
    ("timm.vit_tiny_patch16_224", {"img_size": 32}, 32, ()),
    ("timm.swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4, "embed_dim": 24,
                                           "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}, 64, ()),
]


@pytest.mark.parametrize("name,kwargs,size,bypassed", FAMILY, ids=[f[0] for f in FAMILY])
def test_family_prepare_train_eval_export(name, kwargs, size, bypassed, tmp_path):
    """What a user does with a torchvision/timm model: prepare at W2A2 (every quantized
    layer must run: layers read by a functional are refused by name), a few training steps
    with nuq.param_groups, eval, the packed file and the ONNX export checked in ONNX Runtime."""
    pytest.importorskip(name.partition(".")[0])
    from nuq.export import load_packed, save_packed, to_onnx

    torch.manual_seed(0)
    model = nuq.create_model(name, num_classes=10, **kwargs)
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))
    cfg = nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2)
    if bypassed:
        with pytest.raises(ValueError, match="never called as modules"):
            nuq.prepare(model, cfg, calib=[x])
        cfg = nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2, skip=bypassed)
    q = nuq.prepare(model, cfg, calib=[x])
    names = [n for n, _ in nuq.quant_layers(q)]
    assert len(names) > 5
    if name == "torchvision.vit_b_16":  # every attention projection quantized, none refused
        assert sum(n.endswith((".q_proj", ".k_proj", ".v_proj", ".out_proj")) for n in names) == 4 * 12
    before = {n: p.detach().clone() for n, p in q.named_parameters()}
    opt = torch.optim.SGD(nuq.param_groups(q, lr=0.01), momentum=0.9)
    for _ in range(2):
        loss = nn.functional.cross_entropy(q.train()(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    moved = [n for n, p in q.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.endswith("weight_quantizer.step") for n in moved)
    with torch.no_grad():
        out = q.eval()(x)
    assert torch.isfinite(out).all()
    save_packed(q, tmp_path / "m.nuq.safetensors")
    back = load_packed(tmp_path / "m.nuq.safetensors", model=nuq.create_model(name, num_classes=10, **kwargs))
    with torch.no_grad():
        assert torch.equal(back.eval()(x), out)
    if importlib.util.find_spec("onnxruntime") is not None:
        info = to_onnx(q, x, tmp_path / "m.onnx", verify=True)
        # softmax, LayerNorm and GELU round differently in ONNX Runtime; in a transformer an
        # input that lands on a level boundary then moves one 2-bit level (seen: 0 to 0.19
        # on logits of size 5, by seed), where the convnets agree to float32 rounding
        tol = 0.05 * float(out.abs().max()) if ("vit" in name or "swin" in name) else 1e-4
        assert info["max_abs_diff"] <= tol


@pytest.mark.parametrize("name", ["torchvision.resnet18", "timm.resnet18"])
def test_trained_weights_from_a_file(name, tmp_path):
    """pretrained=<state_dict file>: loaded exactly; a head of another class count stays
    untrained (with a warning), a first conv for 1 channel gets the RGB filters summed."""
    pytest.importorskip(name.partition(".")[0])
    torch.manual_seed(0)
    src = nuq.create_model(name, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    same = nuq.create_model(name, num_classes=1000, pretrained=str(tmp_path / "w.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same(x), src.eval()(x))
    with pytest.warns(UserWarning, match="classifier 'fc' has 1000 classes in w.pth"):
        gray = nuq.create_model(name, num_classes=10, in_channels=1, pretrained=str(tmp_path / "w.pth"))
    assert torch.equal(gray.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(gray.layer1[0].conv1.weight, src.layer1[0].conv1.weight) and gray.fc.out_features == 10
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        nuq.create_model(name, num_classes=10, pretrained=str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError, match="no such file"):
        nuq.create_model(name, num_classes=10, pretrained=str(tmp_path / "missing.pth"))


def test_library_arguments_pass_through(tmp_path):
    """torchvision's weights= and timm's pretrained=True (with timm's own local-file
    override) reach the library instead of clashing with nuq's arguments."""
    tv = pytest.importorskip("torchvision")
    m = nuq.create_model("torchvision.resnet18", num_classes=10, weights=None)
    assert m.fc.out_features == 10
    assert isinstance(nuq.create_model("torchvision.resnet18", num_classes=10, pretrained=False),
                      tv.models.ResNet)
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = nuq.create_model("timm.resnet18", num_classes=10, pretrained=True,
                         pretrained_cfg_overlay={"file": str(tmp_path / "w.pth")})
    assert torch.equal(m.layer1[0].conv1.weight, src.layer1[0].conv1.weight) and m.fc.out_features == 10


def test_missing_library_is_a_clear_error():
    for lib, extra in (("torchvision", "vision"), ("timm", "timm")):
        try:
            __import__(lib)
        except ImportError:
            with pytest.raises(ValueError, match=rf"pip install 'nuq\[{extra}\]'"):
                nuq.create_model(f"{lib}.resnet18")
