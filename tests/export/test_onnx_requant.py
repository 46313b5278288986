"""The QLinearConv pass: integer layers whose next codes are a per-channel step function of
their integer sums run as uint8 x int8 QLinearConv and give the float graph's codes, bit for
bit; layers where that does not hold stay float."""

import collections

import numpy as np
import pytest
import torch
from tests_helpers import needs_data

import nuq
from nuq.export import to_onnx
from nuq.export.onnx_numpy import _Graph
from nuq.export.onnx_range import _code_range
from nuq.export.onnx_requant import MARGIN, _fit, _fit_channel

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": b.numpy()})[0] for b in x.split(500)])


@needs_data
@pytest.mark.parametrize("act,weight,bits", [("lsq", "lsq", 2), ("lsq", "lsq", 4), ("n2uq", "n2uq_w", 2),
                                             ("pact", "dorefa", 2)])
def test_qlinear_graph_gives_the_float_graphs_outputs_bit_for_bit(act, weight, bits, tmp_path):
    """The shipped ResNet-20 at W2A2/W4A4: conv1 of each of the 9 blocks becomes a
    QLinearConv (conv2 feeds the residual add, which stays float), the outputs on 500 real
    images and on the export's verification batches (noise, half and twice the scale)
    equal the float-convolution graph's exactly, and the file does not grow."""
    from nuq.data import load_dataset
    from nuq.export.onnx_export import verification_batches

    test = load_dataset("fashion_mnist", train=False)
    x = test.normalize(test.images[:500])
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist")
    q = nuq.prepare(model, nuq.QATConfig(weight=weight, act=act, w_bits=bits, a_bits=bits), calib=[x[:256]]).eval()
    fast = to_onnx(q, x[:8], tmp_path / "fast.onnx")
    plain = to_onnx(q, x[:8], tmp_path / "plain.onnx", qlinear=False)
    assert len(fast["qlinear"]) == 9 and plain["qlinear"] == []
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "fast.onnx")).graph.node)
    assert ops["QLinearConv"] == 9 and ops["Conv"] == 12
    assert fast["bytes"] <= plain["bytes"] * 1.02
    for b in [x] + verification_batches(x[:128])[1:]:
        np.testing.assert_array_equal(run(tmp_path / "fast.onnx", b), run(tmp_path / "plain.onnx", b))
    with torch.no_grad():
        ref = q(x)
    assert (torch.from_numpy(run(tmp_path / "fast.onnx", x)).argmax(1) == ref.argmax(1)).all()


@needs_data
@pytest.mark.parametrize("act,weight,zero_point", [("lsq", "lsq", 2), ("n2uq", "n2uq_w", 3), ("dorefa", "dorefa", 3)])
def test_signed_input_codes_run_as_qlinear_with_a_zero_point(act, weight, zero_point, tmp_path):
    """The shipped MobileNetV2 at W2A2: the expansion layers read signed codes (the linear
    bottleneck has no ReLU); they become QLinearConv too, their uint8 input shifted by the
    zero point (LSQ's codes -2..1: 2; N2UQ's and DoReFa's signed inputs, odd codes -3..3
    written as twice a threshold count minus 3: 3), and the outputs equal the
    float-convolution graph's bit for bit."""
    from nuq.data import load_dataset
    from nuq.export.onnx_export import verification_batches

    test = load_dataset("fashion_mnist", train=False)
    x = test.normalize(test.images[:300])
    model = nuq.create_model("mobilenetv2", num_classes=10, in_channels=1, pretrained="fashion_mnist")
    q = nuq.prepare(model, nuq.QATConfig(weight=weight, act=act, w_bits=2, a_bits=2), calib=[x[:256]]).eval()
    signed = [n for n, layer in nuq.quant_layers(q) if layer.act_quantizer is not None and layer.act_quantizer.signed]
    fast = to_onnx(q, x[:8], tmp_path / "fast.onnx")
    assert to_onnx(q, x[:8], tmp_path / "plain.onnx", qlinear=False)["qlinear"] == []
    expansions = [n for n in fast["qlinear"] if n.endswith("block.0/Conv") and "features.1/" not in n]
    assert len(signed) >= 16 and len(expansions) == 16
    graph = onnx.load(str(tmp_path / "fast.onnx")).graph
    zps = {t.name: int(onnx.numpy_helper.to_array(t)) for t in graph.initializer if t.name.endswith("__zp")}
    assert sorted(set(zps.values())) == [0, zero_point]
    for b in [x] + verification_batches(x[:128])[1:]:
        np.testing.assert_array_equal(run(tmp_path / "fast.onnx", b), run(tmp_path / "plain.onnx", b))


def step_function(a, b, inv, s=0.03, lo=0, hi=3):
    """BatchNorm (a, b per channel), ReLU and a rounding quantizer after a rescale by s, in
    float32 as the graph computes it: the next codes as a function of the integer sum."""
    a, b, s = np.float32(a)[None, :], np.float32(b)[None, :], np.float32(s)

    def fn(acc):
        y = np.maximum(b + a * (s * acc), np.float32(0))
        return np.rint(np.clip(y * np.float32(inv), lo, hi)).astype(np.float64)
    return fn


def test_fit_reproduces_every_code_with_a_margin_from_each_tie():
    """Channels with a positive, a negative (codes fall as the sum grows), a tiny (one
    code throughout) and a small BatchNorm scale: K*W stays int8 and, on every reachable
    sum, clip(round((K*acc + B) * M)) is the code, never within MARGIN of a tie."""
    rng = np.random.default_rng(0)
    w = rng.integers(-2, 2, size=(4, 3, 3, 3))
    fn = step_function([1.3, -0.7, 1e-9, 2.0], [0.1, 0.9, 0.2, -0.05], inv=2.0)
    fit = _fit(w, 0, 3, fn)
    assert fit is not None and fit["weight"].dtype == np.int8
    flat = w.reshape(4, -1)
    for c in range(4):
        ratio = fit["weight"][c].reshape(-1).astype(np.int64)
        k = ratio[flat[c] != 0] // flat[c][flat[c] != 0]
        assert (k == k[0]).all() and k[0] != 0 and (ratio == k[0] * flat[c]).all()
        hi = int(np.maximum(flat[c] * 3, 0).sum())
        lo = int(np.minimum(flat[c] * 3, 0).sum())
        acc = np.arange(lo, hi + 1, dtype=np.float32)
        want = fn(np.repeat(acc[:, None], 4, 1))[:, c]
        y = (np.float32(k[0]) * acc + np.float32(fit["bias"][c])).astype(np.float32) * fit["scale"][c]
        got = np.clip(np.rint(y), fit["lo"], fit["hi"])
        np.testing.assert_array_equal(got, want)
        assert (len(np.unique(want)) == 1) == (c == 2)  # every channel but the tiny one has steps
        inside = (y > fit["lo"]) & (y < fit["hi"])
        assert (np.abs(y - np.floor(y) - 0.5)[inside] >= MARGIN).all()
    assert np.sign(fit["weight"][1].reshape(-1)[flat[1] != 0][0]) == -np.sign(flat[1][flat[1] != 0][0])


def test_thresholds_no_line_reproduces_have_no_fit():
    """Codes 1, 2, 3 starting at sums 0, 1 and 50: no equally spaced rounding puts every
    threshold between the right integers, so the layer keeps its float graph."""
    v = np.arange(-10, 100)
    code = (v >= 0).astype(float) + (v >= 1) + (v >= 50)
    assert all(_fit_channel(v, code, 0, 3, k) is None for k in (1, 8, 63))
    regular = (v >= 0).astype(float) + (v >= 30) + (v >= 60)
    assert _fit_channel(v, regular, 0, 3, 8) is not None


def _graph(*nodes, inits=()):
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(list(nodes), "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.float32(v), k) for k, v in inits])
    return _Graph(g)


@pytest.mark.parametrize("lo,hi,want", [(0.0, 3.0, (0, 3)), (0.0, 15.0, (0, 15)), (-2.0, 1.0, (-2, 1)),
                                        (-64.0, 63.0, (-64, 63)), (-65.0, 63.0, None), (0.0, 255.0, None),
                                        (0.0, 128.0, None)])
def test_code_range_of_a_clipped_round(lo, hi, want):
    """Round(Clip(x * 2, lo, hi)): codes in [lo, hi]; signed codes are uint8 inputs shifted
    by -lo (the zero point), as long as the shifted codes stay within 127 (past it, the int8
    kernels' int16 pair sums could saturate)."""
    from onnx import helper

    G = _graph(helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Clip", ["m", "lo", "hi"], ["c"]),
               helper.make_node("Round", ["c"], ["y"]), inits=[("two", 2.0), ("lo", lo), ("hi", hi)])
    assert _code_range(G, "y") == want


def test_code_range_needs_a_bound_and_a_rising_function():
    """Round(x * 2) has no bound; Round(Clip(-x)) falls as x grows; a count of threshold
    comparisons (N2UQ) lies in [0, number of thresholds]."""
    from onnx import TensorProto, helper

    G = _graph(helper.make_node("Mul", ["x", "two"], ["m"]), helper.make_node("Round", ["m"], ["y"]),
               inits=[("two", 2.0)])
    assert _code_range(G, "y") is None
    G = _graph(helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Sub", ["zero", "c"], ["s"]),
               helper.make_node("Round", ["s"], ["y"]), inits=[("lo", 0.0), ("hi", 3.0), ("zero", 0.0)])
    assert _code_range(G, "y") is None
    ge = [helper.make_node("GreaterOrEqual", ["x", f"t{i}"], [f"g{i}"]) for i in range(3)]
    cast = [helper.make_node("Cast", [f"g{i}"], [f"f{i}"], to=TensorProto.FLOAT) for i in range(3)]
    adds = [helper.make_node("Add", ["f0", "f1"], ["s1"]), helper.make_node("Add", ["s1", "f2"], ["y"])]
    G = _graph(*ge, *cast, *adds, inits=[(f"t{i}", 0.5 * i) for i in range(3)])
    assert _code_range(G, "y") == (0, 3)
