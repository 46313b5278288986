"""A pass over the exported ONNX graph for ``to_onnx(..., exact=False)``: a convolution's
rescale and BatchNorm folded into its weights and bias.

The exact graph keeps a quantized layer's rescale ``Mul(s_a * s_w, .)`` and its
BatchNorm's ``Mul(a, .) -> Add(b, .)`` as separate float ops after the convolution, the
operations PyTorch performs, so ONNX Runtime gives PyTorch's bits. They are three passes
over the tensor each, and they keep ONNX Runtime from fusing the convolution with the
residual add and ReLU that follow. :func:`fold_affine` composes such a chain of per-channel
``Mul``/``Add`` by constants into ``y = alpha_c * conv + beta_c`` and writes
``Conv(x, W * alpha_c, beta_c)``: one rounding of ``W * alpha_c`` per weight instead of
one per output, so results move by float32 rounding (a value next to a threshold of the
next quantizer can land one level off). The weights stay integer codes in the file
(``Cast(codes) * alpha``, folded by ONNX Runtime at load) where they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_graph import _drop_unused, attributes
from .onnx_numpy import _Graph, _per_channel


def _affine_chain(G: _Graph, conv: Any, channels: int) -> tuple[list[Any], np.ndarray, np.ndarray] | None:
    """The Mul/Add-by-constant nodes after ``conv`` (each the single reader of the one
    before) and the composed per-channel (alpha, beta), or None when there are none."""
    nodes, t = [], conv.output[0]
    alpha = np.ones(channels, np.float64)
    beta = np.zeros(channels, np.float64)
    while True:
        uses = G.consumers.get(t, [])
        if len(uses) != 1 or t in G.outputs:
            break
        n = uses[0][0]
        if n.op_type not in ("Mul", "Add"):
            break
        other = [i for i in n.input if i != t]
        c = G.const(other[0]) if len(other) == 1 else None
        if c is None or not _per_channel(c, channels):
            break
        c = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (channels,))
        if n.op_type == "Mul":
            alpha, beta = alpha * c, beta * c
        else:
            beta = beta + c
        nodes.append(n)
        t = n.output[0]
    return (nodes, alpha, beta) if nodes else None


def fold_affine(model: Any) -> int:
    """Fold per-channel Mul/Add chains after constant-weight Convs into the Convs of
    ``model`` (an ``onnx.ModelProto``, in place); returns how many were folded."""
    from onnx import helper, numpy_helper

    g = model.graph
    G = _Graph(g)
    removed: set[int] = set()
    replace: dict[int, list[Any]] = {}
    inits = []
    for conv in g.node:
        if conv.op_type != "Conv" or len(conv.input) > 2 and conv.input[2]:
            continue
        w = G.const(conv.input[1])
        if w is None or w.ndim != 4:
            continue
        chain = _affine_chain(G, conv, w.shape[0])
        if chain is None:
            continue
        nodes, alpha, beta = chain
        base = conv.output[0]
        scale = np.float32(alpha).reshape(-1, 1, 1, 1)
        # the weight as (its source) * alpha: a constant product ONNX Runtime folds at load
        inits += [numpy_helper.from_array(scale, base + "__alpha"),
                  numpy_helper.from_array(np.float32(beta), base + "__beta")]
        new = [helper.make_node("Mul", [conv.input[1], base + "__alpha"], [base + "__w"])]
        attrs = attributes(conv)
        new.append(helper.make_node("Conv", [conv.input[0], base + "__w", base + "__beta"], [nodes[-1].output[0]],
                                    name=conv.name, **attrs))
        replace[id(conv)] = new
        removed.update(id(n) for n in nodes)
    out = []
    for n in g.node:
        if id(n) in removed:
            continue
        out.extend(replace.get(id(n), [n]))
    del g.node[:]
    g.node.extend(out)
    g.initializer.extend(inits)
    _drop_unused(g)
    return len(replace)
