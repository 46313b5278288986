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

from .onnx_graph import _drop_unused
from .onnx_numpy import _Graph


def _positive_scale(v: np.ndarray | None) -> bool:
    """A QuantizeLinear scale the rewrites handle: a finite positive float32 scalar."""
    return v is not None and v.size == 1 and v.dtype == np.float32 and bool(np.isfinite(v).all()) and float(v) > 0


def _read_by_one(G: _Graph, name: str) -> bool:
    """``name`` feeds exactly one node and is no graph output (so its producer may go)."""
    return name not in G.outputs and len(G.consumers.get(name, [])) == 1


def divide_into_quantize(model: Any) -> int:
    """Fold ``Div(x, s)`` into the ``QuantizeLinear`` at scale 1 that reads it (``s`` a
    positive finite float32 scalar constant, the quotient read by nothing else); in place.
    Returns the number of folded ``Div`` nodes."""
    from onnx import numpy_helper

    g = model.graph
    G = _Graph(g)
    drop, added = set(), []
    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 2:
            continue
        one = G.const(q.input[1])
        div = G.producer.get(q.input[0])
        if not _positive_scale(one) or float(one) != 1.0:
            continue
        if div is None or div.op_type != "Div" or not _read_by_one(G, q.input[0]):
            continue
        s = G.const(div.input[1])
        if not _positive_scale(s):
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
    G = _Graph(g)
    moved, added, after = set(), [], {}
    for q in g.node:
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        clip = G.producer.get(q.input[0])
        scale, zp = G.const(q.input[1]), G.const(q.input[2])
        if clip is None or clip.op_type != "Clip" or len(clip.input) != 3 or zp is None:
            continue
        if not _read_by_one(G, q.input[0]) or not _positive_scale(scale):
            continue
        a, b = G.const(clip.input[1]), G.const(clip.input[2])
        if a is None or b is None or a.size != 1 or b.size != 1 or zp.dtype != np.uint8 or zp.size != 1:
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
