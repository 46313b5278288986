"""What a non-uniform activation lookup costs in ONNX Runtime, against the ops around it.

One interleaved run (2 intra-op threads by default, thread spinning off) of single-purpose
graphs on one activation tensor (default 64x16x28x28, ResNet-20's first stage at batch 64):
a ReLU (one elementwise pass), a 3x3 16->16 float convolution, the same as uint8 x int8
``QLinearConv`` and as ``ConvInteger`` (int32 out), and the exact level lookups the export
can write for ``--thresholds`` thresholds: the comparison form it uses (``level_i * Cast(x >= t_i)``, then ``Max``), the
same with one variadic ``Max``, one ``HardSigmoid`` per threshold instead of the compare
and cast (exact: slope 1/ulp(t) puts the step within one ulp), ``Where`` chains, and a
threshold count plus ``Gather`` of the level table. Every lookup is checked against NumPy
first, bit for bit.

    python bench/onnx_ops.py [--thresholds 3 15] [--shape 64 16 28 28] [--rounds 30]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from timing import interleaved_medians

F = TensorProto.FLOAT


def model(nodes, consts: dict, shape, in_type=F, out_type=F) -> bytes:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, list(shape))],
                          [helper.make_tensor_value_info("y", out_type, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def lookups(t: np.ndarray, lv: np.ndarray, shape) -> dict[str, bytes]:
    """Exact lookups y = lv[i] for the largest t[i] <= x (0 below t[0]); t, lv ascending, > 0."""
    n = len(t)
    c = {f"t{i}": t[i] for i in range(n)} | {f"l{i}": lv[i] for i in range(n)}
    cmp = []
    for i in range(n):
        cmp += [helper.make_node("GreaterOrEqual", ["x", f"t{i}"], [f"g{i}"]),
                helper.make_node("Cast", [f"g{i}"], [f"c{i}"], to=F),
                helper.make_node("Mul", [f"c{i}", f"l{i}"], [f"m{i}"])]
    chain, prev = [], "m0"
    for i in range(1, n):
        out = "y" if i == n - 1 else f"x{i}"
        chain.append(helper.make_node("Max", [prev, f"m{i}"], [out]))
        prev = out
    one_max = helper.make_node("Max", [f"m{i}" for i in range(n)], ["y"])
    out = {"compare, cast, Max chain (export)": model(cmp + chain, c, shape),
           "compare, cast, one Max": model(cmp + [one_max], c, shape)}
    hs, hc = [], {f"l{i}": lv[i] for i in range(n)}
    for i in range(n):
        below = np.nextafter(t[i], np.float32(-np.inf))
        alpha = np.float32(1.0 / (np.float64(t[i]) - np.float64(below)))  # a power of two
        hs += [helper.make_node("HardSigmoid", ["x"], [f"h{i}"], alpha=float(alpha), beta=float(-alpha * below)),
               helper.make_node("Mul", [f"h{i}", f"l{i}"], [f"m{i}"])]
    out["HardSigmoid, Mul, one Max"] = model(hs + [helper.make_node("Max", [f"m{i}" for i in range(n)], ["y"])], hc,
                                            shape)
    wh, prev = [], "zero"
    for i in range(n):
        o = "y" if i == n - 1 else f"w{i}"
        wh += [helper.make_node("GreaterOrEqual", ["x", f"t{i}"], [f"g{i}"]),
               helper.make_node("Where", [f"g{i}", f"l{i}", prev], [o])]
        prev = o
    out["compare, Where chain"] = model(wh, c | {"zero": np.float32(0)}, shape)
    cnt = [helper.make_node("GreaterOrEqual", ["x", f"t{i}"], [f"g{i}"]) for i in range(n)]
    cnt += [helper.make_node("Cast", [f"g{i}"], [f"k{i}"], to=TensorProto.INT32) for i in range(n)]
    cnt += [helper.make_node("Add", [f"k{i - 1}" if i == 1 else f"a{i - 1}", f"k{i}"], [f"a{i}"]) for i in range(1, n)]
    cnt.append(helper.make_node("Gather", ["table", f"a{n - 1}" if n > 1 else "k0"], ["y"]))
    out["count, Gather"] = model(cnt, {f"t{i}": t[i] for i in range(n)}
                                 | {"table": np.concatenate([[0], lv]).astype(np.float32)}, shape)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--thresholds", nargs="*", type=int, default=[3, 15])
    ap.add_argument("--shape", nargs=4, type=int, default=[64, 16, 28, 28])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 1.5).astype(np.float32)
    ch = shape[1]
    w = rng.integers(-2, 2, (ch, ch, 3, 3))
    graphs = {
        "ReLU": (model([helper.make_node("Relu", ["x"], ["y"])], {}, shape), x),
        "Conv 3x3, float": (model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                                  {"w": w.astype(np.float32)}, shape), x),
        "QLinearConv 3x3, uint8 x int8": (model(
            [helper.make_node("QLinearConv", ["x", "one", "zp", "w", "ws", "wzp", "one", "zp", "b"], ["y"],
                              pads=[1, 1, 1, 1])],
            {"one": np.float32(1), "zp": np.uint8(0), "w": w.astype(np.int8), "ws": np.full(ch, 0.1, np.float32),
             "wzp": np.zeros(ch, np.int8), "b": np.zeros(ch, np.int32)},
            shape, TensorProto.UINT8, TensorProto.UINT8), rng.integers(0, 4, shape).astype(np.uint8)),
        "ConvInteger 3x3, uint8 x int8 -> int32": (model(
            [helper.make_node("ConvInteger", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"w": w.astype(np.int8)},
            shape, TensorProto.UINT8, TensorProto.INT32), rng.integers(0, 4, shape).astype(np.uint8)),
    }
    for n in args.thresholds:
        t = np.sort(rng.uniform(0.1, 2.0, n)).astype(np.float32)
        lv = np.sort(rng.uniform(0.1, 2.5, n)).astype(np.float32)
        want = np.concatenate([[0], lv]).astype(np.float32)[(x[..., None] >= t).sum(-1)]
        for name, g in lookups(t, lv, shape).items():
            graphs[f"{n}-threshold lookup: {name}"] = (g, x)
            got = ort.InferenceSession(g, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            if not np.array_equal(got, want):
                raise SystemExit(f"{n}-threshold lookup {name!r} is not exact")
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fns = {}
    for name, (g, inp) in graphs.items():
        sess = ort.InferenceSession(g, so, providers=["CPUExecutionProvider"])
        fns[name] = lambda s=sess, v=inp: s.run(None, {"x": v})
    med = interleaved_medians(fns, args.rounds)
    print(f"ONNX Runtime {ort.__version__}, {args.threads} threads, tensor {'x'.join(map(str, shape))}, "
          f"median of {args.rounds} interleaved rounds\n")
    print("| graph | ms | / ReLU |\n|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {t * 1e3:.3f} | {t / med['ReLU']:.1f} |")


if __name__ == "__main__":
    main()
