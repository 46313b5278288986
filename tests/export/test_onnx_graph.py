"""The export's ONNX building blocks: the threshold count that replaces bucketize, and the
passes that store weights as integer codes behind a Cast or a table Gather that ONNX Runtime
folds at load."""

import collections
import io

import numpy as np
import pytest
import torch

from nuq.export.onnx_integer import DQWeight, arithmetic_step, select_by_thresholds

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from nuq.export.onnx_graph import fold_weight_dequantize, store_weight_tables, weight_table  # noqa: E402


@pytest.mark.parametrize("n", [1, 3, 7, 15, 16, 63])
@pytest.mark.parametrize("values_kind", ["float", "consecutive", "odd", "grid"])
def test_threshold_count_equals_bucketize(n, values_kind):
    g = torch.Generator().manual_seed(n)
    t = torch.sort(torch.randn(n, generator=g))[0]
    k = torch.arange(n + 1.0)
    values = {"float": torch.cumsum(torch.rand(n + 1, generator=g), 0), "consecutive": k - 2,
              "odd": 2 * k - n,  # signed DoReFa / N2UQ inputs: -3, -1, 1, 3 at 2 bits
              "grid": k * 0.1 - 0.3}[values_kind]  # float steps: the count form only where it is exact
    # inputs on the thresholds, one float step either side of them, and at random
    x = torch.cat([t, torch.nextafter(t, t - 1), torch.nextafter(t, t + 1), torch.randn(1000, generator=g) * 2])
    want = values[torch.bucketize(x, t, right=True)]
    assert torch.equal(select_by_thresholds(x, t, values), want)
    step = arithmetic_step(values)
    if values_kind == "grid" and n > 1:
        assert step is None  # k * 0.1 + (-0.3) rounds apart from k * 0.1 - 0.3 somewhere
    if values_kind in ("consecutive", "odd"):
        assert step == (1.0 if values_kind == "consecutive" else 2.0)
    if step is not None:  # the count form: exact by the check, whatever the values
        assert torch.equal(torch.arange(n + 1.0) * step + values[0], values)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("kind", ["from_zero", "positive", "negative", "crossing", "through_zero"])
def test_threshold_select_equals_bucketize_on_every_level(seed, kind):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 17, (1,), generator=g))
    # steps spread over six decades, so that level sums round in float32
    steps = torch.rand(n, generator=g) * 10.0 ** torch.randint(-4, 2, (n,), generator=g).float()
    values = torch.cumsum(steps, 0) - steps[0]
    j = int(torch.randint(1, n, (1,), generator=g))
    values = {"from_zero": values, "positive": values + steps[0], "negative": values - values[-1] - steps[0],
              "crossing": values - values[j] * float(torch.rand((), generator=g)),
              "through_zero": values - values[j]}[kind]
    t = (values[1:] + values[:-1]) / 2
    # on each threshold and one float below it (every level), and at random
    x = torch.cat([t, torch.nextafter(t, t - 1), values, torch.randn(500, generator=g) * float(values.abs().max())])
    got = select_by_thresholds(x, t, values)
    assert torch.equal(got, values[torch.bucketize(x, t, right=True)])


class _Select(torch.nn.Module):
    def __init__(self, t, values):
        super().__init__()
        self.register_buffer("t", t)
        self.register_buffer("values", values)

    def forward(self, x):
        return select_by_thresholds(x, self.t, self.values)


@pytest.mark.parametrize("kind", ["positive", "negative", "crossing"])
def test_threshold_select_in_onnx_runtime_is_the_stored_level(kind):
    """The exported lookup (Max of level * Cast(x >= t), Min over negative levels, no
    Gather) gives ONNX Runtime the same levels as bucketize, bit for bit."""
    g = torch.Generator().manual_seed(1)
    values = torch.cumsum(torch.rand(8, generator=g) + 0.01, 0)
    values = {"positive": values, "negative": values - values[-1] - 0.5, "crossing": values - values[3]}[kind]
    t = (values[1:] + values[:-1]) / 2
    x = torch.cat([t, torch.nextafter(t, t - 1), values, torch.randn(2000, generator=g) * 3]).view(1, -1)
    proto = _export(_Select(t, values), x)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["Gather"] == 0 and ops["Max"] + ops["Min"] >= 5
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    np.testing.assert_array_equal(got, values[torch.bucketize(x, t, right=True)].numpy())


def _export(module, x):
    buf = io.BytesIO()
    torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["input"], output_names=["output"])
    return onnx.load_from_string(buf.getvalue())


class _ConvOnCodes(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.register_buffer("codes", torch.randint(-2, 2, (8, 4, 3, 3), generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.int8))
        self.register_buffer("scale", scale)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, DQWeight.apply(self.codes, self.scale), padding=1)


@pytest.mark.parametrize("scale", [torch.ones(()), torch.tensor(0.037), torch.linspace(0.01, 0.08, 8)])
def test_weight_dequantize_becomes_a_cast_onnx_runtime_folds(scale, tmp_path):
    """The folded weights are DequantizeLinear's bits; on integer operands (scale 1, the
    integer layers) the whole convolution is exact at every optimisation level."""
    m = _ConvOnCodes(scale)
    x = torch.randint(0, 4, (2, 4, 9, 9)).float()
    proto = _export(m, x)
    assert collections.Counter(n.op_type for n in proto.graph.node)["DequantizeLinear"] == 1
    assert fold_weight_dequantize(proto) == 1
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["DequantizeLinear"] == 0 and ops["Cast"] == 1
    assert any(t.data_type == onnx.TensorProto.INT8 for t in proto.graph.initializer)  # codes stay int8
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    assert [n.op_type for n in opt.graph.node] == ["Conv"]  # Cast and Mul folded at load
    w = onnx.numpy_helper.to_array(next(t for t in opt.graph.initializer if t.name == opt.graph.node[0].input[1]))
    assert np.array_equal(w, DQWeight.apply(m.codes, m.scale).numpy())
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
        if scale.numel() == 1 and float(scale) == 1.0:
            assert torch.equal(got, m(x))
        else:  # sums of non-integer products in another order
            torch.testing.assert_close(got, m(x), rtol=1e-5, atol=1e-6)


def test_qdq_layer_keeps_its_dequantize():
    """A convolution whose input is dequantized too is the Q/DQ pattern: left as it is."""

    class QDQConv(_ConvOnCodes):
        def forward(self, x):
            from nuq.export.onnx_export import _QDQ

            x = _QDQ.apply(x, torch.tensor(0.1), torch.tensor(0.0), torch.tensor(0.3), torch.uint8)
            return super().forward(x)

    proto = _export(QDQConv(torch.tensor(0.05)), torch.rand(2, 4, 9, 9))
    assert fold_weight_dequantize(proto) == 0
    assert collections.Counter(n.op_type for n in proto.graph.node)["DequantizeLinear"] == 2


def _level_weight(shape, levels_per_row, rows_differ, seed=0):
    """A float weight whose rows take ``levels_per_row`` values each, one table for all rows
    or (``rows_differ``) a table of their own per row, with a -0.0 among the values."""
    g = torch.Generator().manual_seed(seed)
    tables = torch.randn(shape[0] if rows_differ else 1, levels_per_row, generator=g)
    tables[:, 0] = -0.0
    codes = torch.randint(0, levels_per_row, shape, generator=g)
    return torch.gather(tables.expand(shape[0], -1), 1, codes.view(shape[0], -1)).view(shape)


@pytest.mark.parametrize("rows_differ", [False, True])
def test_weight_table_rebuilds_the_weight_bit_for_bit(rows_differ):
    w = _level_weight((96, 8, 3, 3), 4, rows_differ).numpy()
    codes, table, offsets = weight_table(w)
    assert codes.dtype == np.uint8 and codes.shape == w.shape
    assert (offsets is not None) == rows_differ  # 96 rows x 4 values: over 256 in one table
    index = codes.astype(np.int64) + (offsets if offsets is not None else 0)
    np.testing.assert_array_equal(table[index].view(np.uint32), w.view(np.uint32))  # -0.0 stays -0.0
    assert codes.nbytes + table.nbytes < w.nbytes / 3


def test_weight_table_refuses_weights_of_many_values():
    w = torch.randn(8, 300).numpy()  # a float weight: 300 values in a row
    assert weight_table(w) is None
    assert weight_table(np.array([[1.0, 2.0]], np.float32)) is None  # a table would not save bytes


class _FloatLevelConv(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight, padding=1) * 0.5


@pytest.mark.parametrize("rows_differ", [False, True])
def test_level_weights_are_stored_as_codes_onnx_runtime_folds(rows_differ, tmp_path):
    """nuLSQ-style float level weights: a byte per weight in the file, and after ONNX
    Runtime's folding at load the same float32 weights and outputs as the plain graph."""
    m = _FloatLevelConv(_level_weight((72, 16, 3, 3), 4, rows_differ, seed=3))
    x = torch.randn(2, 16, 9, 9)
    plain = _export(m, x)
    proto = _export(m, x)
    assert store_weight_tables(proto) == 1
    assert len(proto.SerializeToString()) < len(plain.SerializeToString()) / 3
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.dims and np.prod(t.dims) == m.weight.numel()
                   for t in proto.graph.initializer)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    assert {n.op_type for n in opt.graph.node} <= {"Conv", "Mul"}  # Cast, Add and Gather folded at load
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        got, ref = (ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"])
                    .run(None, {"input": x.numpy()})[0] for p in (proto, plain))
        np.testing.assert_array_equal(got, ref)
