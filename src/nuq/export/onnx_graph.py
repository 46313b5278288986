"""A pass over the exported ONNX graph: weights stored as integer codes, computed as float.

The exporter writes a quantized layer's weights as int8/uint8 codes behind a
``DequantizeLinear`` (``nuq.export.onnx_integer.DQWeight``), which keeps the file at a
quarter of float32. ONNX Runtime keeps such a node in the graph and, with it, the
convolution in the plain NCHW layout: its fast NCHWc convolutions need constant weights
(measured: ResNet-20 W2A2 at ~2.5x the float model's latency, against ~1.5x without it).

:func:`fold_weight_dequantize` rewrites ``DequantizeLinear(codes, scale, 0)`` that feeds a
Conv/MatMul/Gemm weight into ``Cast(codes)`` times ``scale``. Both are constants, so ONNX
Runtime folds them at load into the float32 weights, bit for bit what DequantizeLinear
computes (``float(q) * scale``, one rounding), while the file keeps the integer codes.
A layer whose *input* also comes from a DequantizeLinear keeps its pattern: that is the
Q/DQ form which integer toolchains lower to QLinearConv.

:func:`store_weight_tables` does the same for weights whose levels are not an integer grid
(nuLSQ, LCQ, Lloyd): a float32 weight constant with at most 256 distinct values (over the
tensor, or per output channel, as after ``exact=False`` folds a per-channel scale into it)
is stored as uint8 codes and its level table, ``Gather(table, Cast(codes))``, which ONNX
Runtime folds at load into the same float32 bits (the table holds them, compared as bit
patterns, so even -0.0 stays -0.0). The file then holds a byte per weight instead of four.
"""

from __future__ import annotations

from typing import Any

#: op types whose input 1 is a weight
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
#: ops between a weight and its use that only move values
LAYOUT_OPS = ("Transpose", "Identity")


def _constant_values(graph: Any) -> dict[str, Any]:
    """name -> numpy value of every initializer, Constant node output and Identity of one
    (the exporter shares a constant between uses through Identity nodes)."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # topological order: an Identity follows its input's producer
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def fold_weight_dequantize(model: Any) -> int:
    """Rewrite weight DequantizeLinear nodes of ``model`` (an ``onnx.ModelProto``) in place;
    returns how many were rewritten."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    consts = _constant_values(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    rewritten = 0
    new_nodes = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and _is_weight_dq(n, consts, producer, consumers):
            codes, scale = consts[n.input[0]], np.asarray(consts[n.input[1]], dtype=np.float32)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            cast_out = f"{n.output[0]}__codes_f32"
            new_nodes.append(helper.make_node("Cast", [n.input[0]], [cast_out], to=TensorProto.FLOAT))
            if scale.size == 1 and float(scale.reshape(())) == 1.0:
                new_nodes.append(helper.make_node("Identity", [cast_out], [n.output[0]]))
            else:
                shape = [1] * codes.ndim
                if scale.size > 1:
                    shape[axis % codes.ndim] = scale.size
                sname = f"{n.output[0]}__scale"
                g.initializer.append(numpy_helper.from_array(scale.reshape(shape), sname))
                new_nodes.append(helper.make_node("Mul", [cast_out, sname], [n.output[0]]))
            rewritten += 1
        else:
            new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    if rewritten:
        _drop_unused(g)
    return rewritten


#: most distinct values a weight's table may hold (its codes are uint8)
MAX_TABLE = 256


def weight_table(w: Any) -> tuple[Any, Any, Any] | None:
    """(uint8 codes shaped like ``w``, float32 table, int32 per-row offsets or None) with
    ``table.ravel()[codes + offsets] == w`` bit for bit: one table for the tensor, else one
    per output channel (row 0), or None when neither fits 256 values or saves bytes."""
    import numpy as np

    bits = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    values, codes = np.unique(bits, return_inverse=True)
    if values.size <= MAX_TABLE:
        table, codes, offsets = values.view(np.float32), codes.reshape(w.shape), None
    else:
        rows = bits.reshape(w.shape[0], -1)
        per_row = [np.unique(r, return_inverse=True) for r in rows]
        width = max(v.size for v, _ in per_row)
        if width > MAX_TABLE:
            return None
        table = np.zeros((len(per_row), width), np.uint32)
        for i, (v, _) in enumerate(per_row):
            table[i, : v.size] = v
        table = table.view(np.float32)
        codes = np.stack([c.reshape(-1) for _, c in per_row]).reshape(w.shape)
        offsets = (np.arange(w.shape[0], dtype=np.int32) * width).reshape((-1,) + (1,) * (w.ndim - 1))
    if codes.size + table.size * 4 >= w.size * 4:
        return None
    return codes.astype(np.uint8), table.reshape(-1), offsets


def store_weight_tables(model: Any) -> int:
    """Store every float32 weight constant of ``model`` (an ``onnx.ModelProto``, in place)
    that :func:`weight_table` fits as uint8 codes plus a level table; returns how many."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    consumers = _consumers(g)
    stored = 0
    for t in list(g.initializer):
        name = t.name
        # a weight, or one that exact=False scales per channel (onnx_fold: Mul(w, alpha))
        if t.data_type != TensorProto.FLOAT or _weight_uses(name, consumers, LAYOUT_OPS + ("Mul",)) is None:
            continue
        w = numpy_helper.to_array(t)
        fit = weight_table(w) if w.ndim >= 2 else None
        if fit is None:
            continue
        codes, table, offsets = fit
        g.initializer.remove(t)
        g.initializer.extend([numpy_helper.from_array(codes, f"{name}__codes"),
                              numpy_helper.from_array(table, f"{name}__table")])
        idx = f"{name}__index"
        nodes = [helper.make_node("Cast", [f"{name}__codes"], [idx], to=TensorProto.INT32)]
        if offsets is not None:
            g.initializer.append(numpy_helper.from_array(offsets.astype(np.int32), f"{name}__offsets"))
            nodes.append(helper.make_node("Add", [idx, f"{name}__offsets"], [f"{idx}_rows"]))
            idx = f"{idx}_rows"
        nodes.append(helper.make_node("Gather", [f"{name}__table", idx], [name], axis=0))
        for k, n in enumerate(nodes):  # constants first: every reader follows in topological order
            g.node.insert(k, n)
        stored += 1
    return stored


def attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as keyword arguments for ``helper.make_node`` (to rebuild a
    convolution as another op with the same strides, pads, groups...)."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _drop_unused(g: Any) -> None:
    """Remove nodes and initializers nothing reads any more (the removed nodes' zero points,
    weights a rewrite replaced), which ONNX Runtime would otherwise warn about at every load
    or keep in the file. ONNX nodes have no side effects, so an unread node is dead."""
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        for n in dead:
            g.node.remove(n)
        unused = [t for t in g.initializer if t.name not in used]
        for t in unused:
            g.initializer.remove(t)
        if not dead and not unused:
            return


def _consumers(g: Any) -> dict[str, list[tuple[Any, int]]]:
    """tensor name -> the (node, input index) pairs that read it."""
    out: dict[str, list[tuple[Any, int]]] = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            out.setdefault(name, []).append((n, i))
    return out


def _weight_uses(name: str, consumers: dict[str, list], through: tuple[str, ...] = LAYOUT_OPS
                 ) -> list[tuple[Any, int]] | None:
    """The weight ops that ``name`` feeds as input 1, through layout-only ops (Transpose,
    Identity: ``F.linear`` exports as MatMul of the transposed weight) or the other ops
    named in ``through``, or None when it feeds anything else."""
    uses = consumers.get(name, [])
    out: list[tuple[Any, int]] = []
    for op, i in uses:
        if op.op_type in through:
            more = _weight_uses(op.output[0], consumers, through)
            if more is None:
                return None
            out += more
        elif op.op_type in WEIGHT_OPS and i == 1:
            out.append((op, i))
        else:
            return None
    return out or None


def _is_weight_dq(n: Any, consts: dict[str, Any], producer: dict[str, Any], consumers: dict[str, list]) -> bool:
    if len(n.input) < 2 or n.input[0] not in consts or n.input[1] not in consts:
        return False
    if len(n.input) > 2 and n.input[2] and (n.input[2] not in consts or consts[n.input[2]].any()):
        return False  # a non-zero zero point: not the symmetric codes the exporter writes
    uses = _weight_uses(n.output[0], consumers)
    if uses is None:
        return False
    # keep the Q/DQ pattern of a layer whose input is dequantized too
    return not any((p := producer.get(op.input[0])) is not None and p.op_type == "DequantizeLinear"
                   for op, _ in uses)
