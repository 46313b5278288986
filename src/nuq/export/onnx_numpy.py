"""The export graph's elementwise operators evaluated in NumPy, float32 for float32.

The passes that rewrite the exported graph (:mod:`nuq.export.onnx_requant`,
:mod:`nuq.export.onnx_fold`) must know exactly what ONNX Runtime will compute for a chain
of elementwise nodes: ``_eval_node`` applies one node with the same IEEE operation (ONNX
``Round`` is half to even, as ``np.rint``), and ``_Graph`` indexes a graph's producers,
consumers and constants (through ``Identity``/``Cast``/``Mul`` of constants).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_graph import _constant_values, _consumers

_UNARY = {
    "Relu": lambda x: np.maximum(x, np.float32(0)),
    "Round": np.rint,  # ONNX Round: half to even, as np.rint
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Neg": np.negative,
    "Identity": lambda x: x,
}
_BINARY = {
    "Mul": np.multiply,
    "Add": np.add,
    "Sub": np.subtract,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
    "GreaterOrEqual": np.greater_equal,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "Less": np.less,
}
ELEMENTWISE = set(_UNARY) | set(_BINARY) | {"Clip", "Cast"}


def _eval_node(n: Any, args: list[np.ndarray]) -> np.ndarray:
    from onnx import helper

    if n.op_type in _UNARY:
        return _UNARY[n.op_type](args[0])
    if n.op_type in _BINARY:
        return _BINARY[n.op_type](args[0], args[1])
    if n.op_type == "Clip":
        x = args[0]
        if len(args) > 1 and args[1] is not None:
            x = np.maximum(x, args[1])
        if len(args) > 2 and args[2] is not None:
            x = np.minimum(x, args[2])
        return x
    to = next(a.i for a in n.attribute if a.name == "to")
    return args[0].astype(helper.tensor_dtype_to_np_dtype(to))


class _Graph:
    def __init__(self, g: Any) -> None:
        self.g = g
        self.consts = _constant_values(g)
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = _consumers(g)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is a constant, through Identity/Cast/Mul of constants."""
        if name in self.consts:
            return self.consts[name]
        n = self.producer.get(name)
        if n is None or n.op_type not in ("Cast", "Identity", "Mul"):
            return None
        args = [self.const(i) for i in n.input]
        if any(a is None for a in args):
            return None
        self.consts[name] = _eval_node(n, args)
        return self.consts[name]

    def integer_weight(self, conv: Any) -> np.ndarray | None:
        w = self.const(conv.input[1]) if len(conv.input) > 1 else None
        if w is None or w.ndim != 4 or (len(conv.input) > 2 and conv.input[2]):
            return None
        if not np.array_equal(w, np.round(w)) or np.abs(w).max() > 127:
            return None
        return w.astype(np.int64)


def _per_channel(c: np.ndarray, channels: int) -> bool:
    """A constant that broadcasts over [N, C, H, W] as a scalar or one value per channel."""
    return c.size == 1 or (c.size == channels and c.shape[-3:] == (channels, 1, 1)[-c.ndim:])
