"""to_onnx(exact=False): each remaining convolution's rescale and BatchNorm folded into its
weights and bias -- fewer ops, the int8 codes still in the file, outputs within float32
rounding of PyTorch's (a rare one-level move at a quantizer threshold)."""

import collections

import numpy as np
import pytest
import torch
from tests_helpers import needs_data

import nuq
from nuq.export import to_onnx
from nuq.export.onnx_fold import _affine_chain
from nuq.export.onnx_numpy import _Graph

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@needs_data
def test_folded_graph_agrees_with_pytorch_and_keeps_int8_codes(tmp_path):
    from nuq.data import load_dataset

    test = load_dataset("fashion_mnist", train=False)
    x = test.normalize(test.images[:1000])
    model = nuq.create_model("resnet20", num_classes=10, in_channels=1, pretrained="fashion_mnist")
    q = nuq.prepare(model, nuq.QATConfig(weight="lsq", act="lsq", w_bits=2, a_bits=2), calib=[x[:256]]).eval()
    exact = to_onnx(q, x[:8], tmp_path / "exact.onnx")
    fast = to_onnx(q, x[:8], tmp_path / "fast.onnx", exact=False)
    ops = {k: collections.Counter(n.op_type for n in onnx.load(str(tmp_path / f"{k}.onnx")).graph.node)
           for k in ("exact", "fast")}
    # the 12 float convolutions (stem, conv2 of each block, 2 shortcuts) lose their rescale,
    # BatchNorm multiply and add; the QLinearConvs are unchanged
    assert ops["fast"]["QLinearConv"] == ops["exact"]["QLinearConv"] == 9
    assert ops["exact"]["Add"] - ops["fast"]["Add"] == 12
    assert fast["bytes"] <= exact["bytes"] * 1.02  # weights still int8 codes
    sess = ort.InferenceSession(str(tmp_path / "fast.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        ref = q(x)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert (got - ref).abs().median() < 1e-4  # most outputs: float32 rounding only


def test_affine_chain_composes_per_channel_multiplies_and_adds():
    """Conv -> Mul(s) -> Mul(a_c) -> Add(b_c) is a_c * s * conv + b_c; a Mul by a tensor
    that varies over the width ends the chain."""
    from onnx import TensorProto, helper, numpy_helper

    a = np.float32([2.0, -1.0, 0.5]).reshape(1, 3, 1, 1)
    b = np.float32([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["s", "c"], ["m1"]),
             helper.make_node("Mul", ["a", "m1"], ["m2"]), helper.make_node("Add", ["b", "m2"], ["y0"]),
             helper.make_node("Mul", ["y0", "wide"], ["y"])]
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"w": np.ones((3, 1, 1, 1), np.float32), "s": np.float32(0.25), "a": a, "b": b,
              "wide": np.ones((1, 1, 1, 4), np.float32)}.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    G = _Graph(g)
    chain, alpha, beta = _affine_chain(G, nodes[0], 3)
    assert [n.output[0] for n in chain] == ["m1", "m2", "y0"]
    np.testing.assert_allclose(alpha, 0.25 * a.reshape(-1))
    np.testing.assert_allclose(beta, b.reshape(-1))
