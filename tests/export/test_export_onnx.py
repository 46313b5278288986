"""to_onnx: ONNX Runtime reproduces the quantized model on real Fashion-MNIST images for
every registered method; uniform quantizers appear as Q/DQ, the others as lookups."""

import collections

import numpy as np
import pytest
import torch
from tests_helpers import needs_data
from torch import nn

import nuq
from nuq.export import export_model, to_onnx
from nuq.quantizers import quantizer_class

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def images():
    """64 real test images, normalised as in training (used by @needs_data tests only)."""
    from nuq.data import load_dataset

    test = load_dataset("fashion_mnist", train=False)
    return test.normalize(test.images[:64])


def config(weight, act, bits=2, **kw):
    """W/A methods at ``bits`` (or their minimum) with each method's first init method."""
    wc, ac = quantizer_class(weight), quantizer_class(act)
    init = {"w_init": wc.init_methods[0], "a_init": ac.init_methods[0]}
    return nuq.QATConfig(weight=weight, act=act, w_bits=max(bits, wc.min_bits), a_bits=max(bits, ac.min_bits),
                         **(init | kw))


@torch.no_grad()
def settle(model, x, a_init):
    """Make an untrained quantized net sane: BatchNorm statistics of the float-activation
    net with quantized weights, activation quantizers calibrated on it, then BatchNorm
    statistics of the fully quantized net. Otherwise weights quantized to levels far from
    the float weights (APoT's alpha, for one) grow the activations layer by layer to ~1e12,
    where float32 has no 1e-4 to compare."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    layers = [m for _, m in nuq.quant_layers(model)]

    def refresh():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()(x)
        model.eval()

    stash = [m.act_quantizer for m in layers]
    for m in layers:
        m.act_quantizer = None
    refresh()
    for m, q in zip(layers, stash):
        m.act_quantizer = q
    nuq.calibrate(model, [x], a_init)
    refresh()
    return model


def prepare_with(method, calib, factory, bits=2):
    """The method as weight and activation quantizer, or in the one role it supports."""
    errors = []
    for w, a in ((method, method), (method, "lsq"), ("lsq", method)):
        try:
            cfg = config(w, a, bits)
            q = nuq.prepare(factory(), cfg, calib=[calib])
        except ValueError as e:
            errors.append(str(e))
            continue
        return settle(q, calib, cfg.a_init)
    pytest.skip(f"{method}: no W/A role prepares: {errors}")


def resnet():
    return nuq.create_model("resnet20", num_classes=10, in_channels=1, width=4)


def mlp():
    return nuq.create_model("mlp", in_channels=1, hidden=32)


def run_ort(path, x, level=None):
    opts = ort.SessionOptions()
    if level is not None:
        opts.graph_optimization_level = level
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


def check_close(got, ref, flips=0.0):
    """Max abs difference <= 1e-4 and the same top-1 on every image.

    ``flips``: fraction of images allowed a larger difference. ONNX Runtime sums a
    convolution in another order than PyTorch (float32 noise ~1e-7 relative), so a
    pre-activation lying within that noise of a quantization threshold can land on the
    neighbouring level: one activation one step off, ~1e-3 on the logits. Measured on 1024
    test images: 0 such images for most methods, at most 4 (0.4%) with float weights that
    ONNX Runtime folds BatchNorm into."""
    d = (got - ref).abs().amax(1)
    assert (d > 1e-4).float().mean().item() <= flips, f"max abs difference {d.max().item():.3g}"
    assert torch.equal(got.argmax(1), ref.argmax(1))


@needs_data
@pytest.mark.parametrize("method", nuq.available_quantizers())
def test_onnx_runtime_matches_pytorch_for_every_method(method, images, tmp_path):
    q = prepare_with(method, images[:16], resnet)
    x = images[16:]
    with torch.no_grad():
        ref = q(x)
    info = to_onnx(q, x[:4], tmp_path / "m.onnx")  # traced on 4 images, run on 48: dynamic batch
    # integer layers sum exactly in both runtimes; float convolutions (non-grid tables) may
    # put a value near a threshold on the other side (see check_close)
    integer = all(v["act"].startswith("integer-") for v in info["layers"].values())
    check_close(run_ort(tmp_path / "m.onnx", x), ref, flips=0.0 if integer else 0.05)
    # what is traced equals the model bit for bit: any difference above is ONNX Runtime's
    emodel, _ = export_model(q)
    with torch.no_grad():
        torch.testing.assert_close(emodel(x), ref, atol=0, rtol=0)


@pytest.mark.parametrize("method", nuq.available_quantizers())
def test_export_mode_model_is_exact_for_every_method(method):
    """The module tree that is traced equals the model bit for bit (ONNX Runtime then
    differs only by float32 summation order)."""
    x = torch.randn(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    q = prepare_with(method, x[:16], mlp)
    with torch.no_grad():
        for _, qz in nuq.named_quantizers(q):  # off the initial (often uniform) tables
            for p in qz.parameters():
                p.mul_(torch.linspace(0.8, 1.2, p.numel()).view(p.shape))
        ref = q(x[16:])
        emodel, paths = export_model(q)
        torch.testing.assert_close(emodel(x[16:]), ref, atol=0, rtol=0)
    assert set(paths) == {n for n, _ in nuq.quant_layers(q)}


@needs_data
def test_uniform_layers_are_integer_ops_nonuniform_are_lookups(images, tmp_path):
    """LSQ (and the 8-bit minmax first/last layers): activation integers from Round, a
    convolution of them with the int8 weight codes (stored as int8, a Cast that ONNX Runtime
    folds), one rescale; nuLSQ: its 3 thresholds compared, each level times its comparison,
    the largest taken (two Max per layer), no Gather on activations; its float level weights
    stored as uint8 codes and a table (a Gather of constants, folded at load)."""
    q = prepare_with("lsq", images[:16], resnet)
    info = to_onnx(q, images[:4], tmp_path / "lsq.onnx", qlinear=False)
    kinds = collections.Counter((v["weight"], v["act"]) for v in info["layers"].values())
    assert sum(n for (w, a), n in kinds.items() if w == "int8" and a in ("integer-recip", "integer-div")) == 22
    graph = onnx.load(str(tmp_path / "lsq.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["Conv"] == 21 and ops["MatMul"] == 1 and ops["Round"] == 22 and ops["Cast"] == 22
    assert ops["ConvInteger"] == ops["QuantizeLinear"] == ops["DequantizeLinear"] == ops["Gather"] == 0
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 22 and sum(np.prod(t.dims) for t in int8) == sum(
        layer.weight.numel() for _, layer in nuq.quant_layers(q))
    with torch.no_grad():
        check_close(run_ort(tmp_path / "lsq.onnx", images[16:]), q(images[16:]))
    if "nulsq" not in nuq.available_quantizers():
        return
    q = prepare_with("nulsq", images[:16], resnet)
    with torch.no_grad():  # non-uniform steps
        for _, qz in nuq.named_quantizers(q):
            for p in qz.parameters():
                p.mul_(torch.linspace(0.7, 1.3, p.numel()).view(p.shape))
    info = to_onnx(q, images[:4], tmp_path / "nulsq.onnx")
    assert sum(v["act"] == "lookup" for v in info["layers"].values()) == 20
    graph = onnx.load(str(tmp_path / "nulsq.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["GreaterOrEqual"] == 60 and ops["Max"] == 40 and ops["Where"] == 0
    inits = {t.name: t for t in graph.initializer}
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    assert sum(v["weight"] == "float" for v in info["layers"].values()) == len(gathers) == 20
    assert all(n.input[0] in inits and n.input[0].endswith("__table") for n in gathers)
    uint8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert sum(np.prod(t.dims) for t in uint8) == sum(
        layer.weight.numel() for name, layer in nuq.quant_layers(q) if info["layers"][name]["weight"] == "float")
    with torch.no_grad():
        check_close(run_ort(tmp_path / "nulsq.onnx", images[16:]), q(images[16:]))


@needs_data
@pytest.mark.parametrize("level", ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
@pytest.mark.parametrize("factory", [resnet, mlp])
def test_every_onnx_runtime_optimisation_level(level, factory, images, tmp_path):
    """ONNX Runtime rewrites Q/DQ graphs (weight/bias quantization, QGemm fusion); the
    export keeps Q/DQ where those rewrites cannot change the numbers."""
    q = prepare_with("lsq", images[:16], factory)
    to_onnx(q, images[:4], tmp_path / "m.onnx")
    with torch.no_grad():
        ref = q(images[16:])
    check_close(run_ort(tmp_path / "m.onnx", images[16:], getattr(ort.GraphOptimizationLevel, level)), ref)


def test_verify_and_errors(tmp_path):
    q = nuq.prepare(mlp(), config("lsq", "lsq"), calib=[torch.randn(16, 1, 28, 28)])
    info = to_onnx(q, torch.randn(3, 1, 28, 28), tmp_path / "m.onnx", verify=True)
    assert info["max_abs_diff"] <= 1e-4 and info["bytes"] == (tmp_path / "m.onnx").stat().st_size
    # verified on the example and four batches made from it, the worst one reported
    assert len(info["verify_diffs"]) == 5 and info["max_abs_diff"] == max(info["verify_diffs"])
    with pytest.raises(ValueError, match="no quantized layers"):
        to_onnx(mlp(), torch.randn(1, 1, 28, 28), tmp_path / "f.onnx")
    with pytest.raises(ValueError, match="example_input"):
        to_onnx(q, [1, 2], tmp_path / "g.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_dynamic_observer_activation_is_exported_per_batch(tmp_path):
    """A minmax activation with a dynamic observer depends on its batch; so does the graph."""
    q = nuq.prepare(mlp(), config("lsq", "lsq"), calib=[torch.randn(16, 1, 28, 28)]).eval()
    to_onnx(q, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")
    for scale in (0.5, 3.0):
        x = torch.randn(8, 1, 28, 28) * scale
        with torch.no_grad():
            check_close(run_ort(tmp_path / "m.onnx", x), q(x))


def test_verification_batches_are_fresh_and_alike():
    from nuq.export.onnx_export import verification_batches

    x = torch.rand(6, 1, 8, 8) * 3 + 1
    bs = verification_batches(x)
    assert torch.equal(bs[0], x) and all(b.shape == x.shape for b in bs)
    assert torch.equal(bs[1].reshape(-1).sort().values, x.reshape(-1).sort().values) and not torch.equal(bs[1], x)
    assert torch.equal(bs[2], x * 0.5) and torch.equal(bs[3], x * 2)
    assert abs(float(bs[4].mean() - x.mean())) < 0.3


@pytest.mark.parametrize("bits", [3, 4])
def test_dorefa_activations_above_2_bits_are_rounded_not_looked_up(bits, tmp_path):
    """DoReFa rounds x * (2^b - 1) and scales by the float32 1/(2^b - 1), whose reciprocal
    is not 2^b - 1: the export multiplies by the integer itself, where it fell back to a
    15-threshold lookup (3.8x/6.0x the float model at 4 bits instead of ~1.6x/1.8x)."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, width=8)
    q = nuq.prepare(model, nuq.QATConfig(weight="dorefa", act="dorefa", w_bits=bits, a_bits=bits,
                                         first_last="8bit"), calib=[x])
    info = to_onnx(q, x[:4], tmp_path / "d.onnx", verify=True)
    kinds = collections.Counter(v["act"] for v in info["layers"].values())
    assert kinds["integer-recip"] == 20 and "integer-lookup" not in kinds
    assert info["max_abs_diff"] == 0.0
    with torch.no_grad():
        assert torch.equal(run_ort(tmp_path / "d.onnx", x), q.eval()(x))
