"""BatchNorm with written-out eval arithmetic (b + a * x): what it computes, that prepare
and load_packed use it, and that a uniform W2A2 model's ONNX export then gives PyTorch's
bits on real images (ONNX Runtime's BatchNormalization node rounded differently)."""

import pytest
import torch
from tests_helpers import needs_data
from torch import nn

import nuq
from nuq.nn.batchnorm import ExactBatchNorm1d, ExactBatchNorm2d, exact_batchnorm


def _bn(cls, c=6):
    torch.manual_seed(0)
    bn = cls(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3)
    return bn


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2d, (4, 6, 5, 5)), (nn.BatchNorm1d, (4, 6)),
                                       (nn.BatchNorm1d, (4, 6, 3))])
def test_eval_is_multiply_then_add_and_training_is_unchanged(cls, shape):
    ref, bn = _bn(cls), exact_batchnorm(_bn(cls))
    assert type(bn) in (ExactBatchNorm1d, ExactBatchNorm2d) and isinstance(bn, cls)
    assert bn.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(shape)
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = bn.bias - bn.running_mean * a
    view = (1, -1) + (1,) * (x.dim() - 2)
    assert torch.equal(bn.eval()(x), b.view(view) + a.view(view) * x)
    torch.testing.assert_close(bn(x), ref.eval()(x), rtol=1e-6, atol=1e-6)  # the same function
    assert torch.equal(bn.train()(x), ref.train()(x)) and torch.equal(bn.running_mean, ref.running_mean)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(bn.eval()(x.bfloat16()), ref.eval()(x.bfloat16()))  # PyTorch's kernel


def test_prepare_and_load_packed_use_it(tmp_path):
    from nuq.export import load_packed, save_packed

    m = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)
    q = nuq.prepare(m, nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2), calib=[torch.randn(8, 1, 28, 28)])
    assert all(type(b) is ExactBatchNorm2d for b in q.modules() if isinstance(b, nn.BatchNorm2d))
    assert all(type(b) is nn.BatchNorm2d for b in m.modules() if isinstance(b, nn.BatchNorm2d))  # copy
    save_packed(q, tmp_path / "m.nuq.safetensors")
    back = load_packed(tmp_path / "m.nuq.safetensors", model=nuq.create_model("resnet20", num_classes=10,
                                                                              in_channels=1, width=4))
    assert all(type(b) is ExactBatchNorm2d for b in back.modules() if isinstance(b, nn.BatchNorm2d))
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), q.eval()(x))


@needs_data
@pytest.mark.parametrize("method", ["n2uq", "apot"])
def test_uniform_export_is_bit_identical_on_real_images(method, tmp_path):
    """The shipped ResNet-20 at W2A2 (integer layers throughout): with BatchNormalization
    nodes, 4 (N2UQ) and 1 (APoT) of these 3000 test images got logits up to 1.1 apart."""
    ort = pytest.importorskip("onnxruntime")
    from nuq.data import load_dataset
    from nuq.export import to_onnx

    test = load_dataset("fashion_mnist", None, train=False)
    x = test.normalize(test.images[:3000])
    m = nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist")
    weight = "n2uq_w" if method == "n2uq" else method
    q = nuq.prepare(m, nuq.QATConfig(weight=weight, act=method, w_bits=2, a_bits=2, first_last="8bit"),
                    calib=[x[:256]]).eval()
    info = to_onnx(q, x[:8], tmp_path / "m.onnx")
    assert all(v["act"].startswith("integer-") for v in info["layers"].values())
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for i in range(0, len(x), 500):
        with torch.no_grad():
            ref = q(x[i:i + 500])
        assert torch.equal(torch.from_numpy(sess.run(None, {"input": x[i:i + 500].numpy()})[0]), ref)
