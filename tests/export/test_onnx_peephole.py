"""Exact local rewrites of the export graph: a quantizer's Div folded into its
QuantizeLinear and its float Clip moved behind it as a uint8 Clip give the same codes, bit
for bit, at and one ulp around every rounding tie and clip bound."""

import numpy as np
import pytest

from nuq.export.onnx_peephole import clip_after_quantize, divide_into_quantize

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def graph(nodes, consts, outputs=("y",)):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    outs = [helper.make_tensor_value_info(o, TensorProto.UINT8 if o == "y" else TensorProto.FLOAT, [None])
            for o in outputs]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])], outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def run(model, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def probes(s, lo, hi, seed=0):
    """Every rounding tie (k + 1/2) * s in and beyond [lo, hi], the bounds, one ulp either
    side of each, and random values."""
    k = np.arange(np.floor(lo / s) - 3, np.ceil(hi / s) + 3)
    pts = np.concatenate([(k + 0.5) * s, [lo, hi]]).astype(np.float32)
    pts = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(-np.inf))])
    rnd = np.random.default_rng(seed).uniform(lo - 4 * s, hi + 4 * s, 20000).astype(np.float32)
    return np.concatenate([pts, rnd, np.float32([0.0, -0.0, 1e30, -1e30])])


@pytest.mark.parametrize("s,lo,hi,zp", [(0.0371, 0.0, 3 * 0.0371, 0), (0.21, -2 * 0.21, 0.21, 2),
                                        (1.7e-3, 0.0, 15 * 1.7e-3, 0), (0.05, 0.013, 0.2, 0), (0.3, -0.9, 0.9, 3)])
def test_divide_and_clip_rewrites_keep_every_code(s, lo, hi, zp):
    """Clip(lo, hi) -> Div(s) -> QuantizeLinear(1, zp) becomes QuantizeLinear(s, zp) ->
    Clip(uint8), with the same output on every probe (bounds off the grid included)."""
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Div", ["c", "s"], ["d"]),
             helper.make_node("QuantizeLinear", ["d", "one", "zp"], ["y"])]
    consts = {"lo": np.float32(lo), "hi": np.float32(hi), "s": np.float32(s), "one": np.float32(1), "zp": np.uint8(zp)}
    x = probes(s, lo, hi)
    want = run(graph(nodes, consts), x)[0]
    m = graph(nodes, consts)
    assert divide_into_quantize(m) == 1 and clip_after_quantize(m) == 1
    assert [n.op_type for n in m.graph.node] == ["QuantizeLinear", "Clip"]
    np.testing.assert_array_equal(run(m, x)[0], want)


def test_clip_moves_behind_a_reciprocal_quantizer():
    """Mul(1/s) -> Clip(kmin, kmax) -> QuantizeLinear(1): the Clip moves, the Mul stays
    (QuantizeLinear divides, which is not the same as multiplying by the reciprocal)."""
    s = np.float32(0.0431)
    nodes = [helper.make_node("Mul", ["x", "inv"], ["m"]), helper.make_node("Clip", ["m", "lo", "hi"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "one", "zp"], ["y"])]
    consts = {"inv": np.float32(1) / s, "lo": np.float32(0), "hi": np.float32(3), "one": np.float32(1),
              "zp": np.uint8(0)}
    x = probes(s, 0.0, 3 * s)
    want = run(graph(nodes, consts), x)[0]
    m = graph(nodes, consts)
    assert divide_into_quantize(m) == 0 and clip_after_quantize(m) == 1
    assert [n.op_type for n in m.graph.node] == ["Mul", "QuantizeLinear", "Clip"]
    np.testing.assert_array_equal(run(m, x)[0], want)


def test_values_read_elsewhere_are_left_alone():
    """A quotient or a clipped value that another node (here a graph output) reads, and a
    divisor that is not a positive scalar, are not rewritten."""
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Div", ["c", "s"], ["d"]),
             helper.make_node("QuantizeLinear", ["d", "one", "zp"], ["y"])]
    consts = {"lo": np.float32(0), "hi": np.float32(1), "s": np.float32(0.1), "one": np.float32(1), "zp": np.uint8(0)}
    m = graph(nodes, consts, outputs=("y", "d"))
    assert divide_into_quantize(m) == 0
    m = graph(nodes, dict(consts, s=np.float32(-0.1)))
    assert divide_into_quantize(m) == 0
    nodes2 = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
              helper.make_node("QuantizeLinear", ["c", "s", "zp"], ["y"])]
    m = graph(nodes2, consts, outputs=("y", "c"))
    assert clip_after_quantize(m) == 0
