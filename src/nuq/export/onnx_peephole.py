"""Exact local rewrites of the exported ONNX graph that save a pass over a tensor.

:func:`divide_into_quantize`: a uniform quantizer that divides by its step is exported as
``Clip -> Div(s) -> Round``, and where the next layer runs on uint8 codes the ``Round``
becomes ``QuantizeLinear(., 1, zp)`` (:mod:`nuq.export.onnx_requant`). ``QuantizeLinear``
is itself ``saturate(round_half_even(x / scale) + zp)``, so

    QuantizeLinear(Div(x, s), 1, zp) == QuantizeLinear(x, s, zp)

whenever ONNX Runtime's division inside QuantizeLinear is the IEEE float32 division the
``Div`` node does. It is: on every value tried (167M float32 inputs at and one ulp around
the rounding ties ``(k + 1/2) * s`` of 40 scales, both zero points, every optimisation
level) the two agree bit for bit, and the test suite checks the rewritten graph against
the original one. The ``Div`` pass -- a float32 tensor written and read again -- is gone.

:func:`clip_after_quantize`: for any nondecreasing f, ``f(clip(v, a, b)) = clip(f(v), f(a),
f(b))``, and ``QuantizeLinear`` at a positive scale is one. A float ``Clip`` in front of a
``QuantizeLinear`` (the quantizer's range) therefore becomes a uint8 ``Clip`` behind it, at
the codes of its bounds: a byte per element read and written instead of four.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_graph import _constant_values, _consumers, _drop_unused


def divide_into_quantize(model: Any) -> int:
    """Fold ``Div(x, s)`` into the ``QuantizeLinear`` at scale 1 that reads it (``s`` a
    positive finite float32 scalar constant, the quotient read by nothing else); in place.
    Returns the number of folded ``Div`` nodes."""
    from onnx import numpy_helper

    g = model.graph
    consts = _constant_values(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    outputs = {o.name for o in g.output}
    drop, added = set(), []
    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 2:
            continue
        one = consts.get(q.input[1])
        div = producer.get(q.input[0])
        if one is None or one.size != 1 or one.dtype != np.float32 or float(one) != 1.0:
            continue
        if div is None or div.op_type != "Div" or q.input[0] in outputs or len(consumers.get(q.input[0], [])) != 1:
            continue
        s = consts.get(div.input[1])
        if s is None or s.size != 1 or s.dtype != np.float32 or not (np.isfinite(s).all() and float(s) > 0):
            continue
        name = q.output[0] + "__scale"
        added.append(numpy_helper.from_array(np.asarray(s, np.float32).reshape(()), name))
        q.input[0], q.input[1] = div.input[0], name
        drop.add(id(div))
    if drop:
        kept = [n for n in g.node if id(n) not in drop]
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(added)
        _drop_unused(g)
    return len(drop)


def _quantize(v: np.ndarray, scale: np.ndarray, zp: np.ndarray) -> np.ndarray:
    """QuantizeLinear to uint8 in NumPy: float32 division, round half to even, saturation."""
    q = np.rint(np.float32(v) / np.float32(scale)) + np.float64(zp)
    return np.clip(q, 0, 255).astype(np.uint8)


def clip_after_quantize(model: Any) -> int:
    """Move a constant ``Clip`` that only a uint8 ``QuantizeLinear`` (scalar positive scale)
    reads behind it, as a uint8 ``Clip``; in place. Returns the number of moved clips."""
    from onnx import helper, numpy_helper

    g = model.graph
    consts = _constant_values(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers = _consumers(g)
    outputs = {o.name for o in g.output}
    moved, added, after = set(), [], {}
    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        clip = producer.get(q.input[0])
        scale, zp = consts.get(q.input[1]), consts.get(q.input[2])
        if clip is None or clip.op_type != "Clip" or len(clip.input) != 3 or scale is None or zp is None:
            continue
        if q.input[0] in outputs or len(consumers.get(q.input[0], [])) != 1:
            continue
        a, b = consts.get(clip.input[1]), consts.get(clip.input[2])
        if a is None or b is None or a.size != 1 or b.size != 1 or zp.dtype != np.uint8 or zp.size != 1:
            continue
        if scale.size != 1 or scale.dtype != np.float32 or not (np.isfinite(scale).all() and float(scale) > 0):
            continue
        if not (a <= b):
            continue
        base = q.output[0]
        lo, hi = (numpy_helper.from_array(_quantize(v, scale, zp).reshape(()), f"{base}__c{k}")
                  for k, v in (("lo", a), ("hi", b)))
        added += [lo, hi]
        raw = base + "__unclipped"
        q.input[0] = clip.input[0]
        after[id(q)] = helper.make_node("Clip", [raw, lo.name, hi.name], [base])
        q.output[0] = raw
        moved.add(id(clip))
    if moved:
        nodes = []
        for n in g.node:
            if id(n) in moved:
                continue
            nodes.append(n)
            if id(n) in after:
                nodes.append(after[id(n)])
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(added)
        _drop_unused(g)
    return len(moved)
