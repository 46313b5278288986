"""Range analysis of integer codes in the export graph.

``_code_range(G, name)`` proves that a tensor is an integer code in [lo, hi]: it is
computed by elementwise ops that never decrease from a constant ``Clip`` or a comparison
(``Round(Clip(x * (1/s)))``, N2UQ's count of threshold comparisons), so its extremes are
the chain evaluated at the extremes of its inputs. :mod:`nuq.export.onnx_requant` feeds
such codes to uint8 kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnx_numpy import ELEMENTWISE, _eval_node, _Graph

_INTEGER_OUT = {"Round", "Floor", "Ceil", "GreaterOrEqual", "Greater"}
_COMMUTATIVE = {"Add", "Mul", "Max", "Min"}
_BIG = np.float32(3e38)


def _nondecreasing(G: _Graph, n: Any) -> list[str] | None:
    """The dynamic inputs of ``n`` when its output never decreases as they grow (the other
    inputs constant; ``x * c`` and ``x / c`` for c > 0, ``x - c``, ``x >= c``), else None."""
    dyn = [i for i in n.input if i and G.const(i) is None]
    consts = [v for i in n.input if i and (v := G.const(i)) is not None]
    op = n.op_type
    if op in ("Relu", "Round", "Floor", "Ceil", "Identity", "Cast"):
        return dyn
    if op == "Clip":
        return dyn if dyn == [n.input[0]] else None
    if op in _COMMUTATIVE:
        if op == "Mul":
            return dyn if len(dyn) == 1 and all((v > 0).all() for v in consts) else None
        return dyn
    if op in ("Div", "Sub", "GreaterOrEqual", "Greater"):
        if dyn != [n.input[0]]:
            return None  # c / x, c - x, c >= x decrease
        return dyn if op != "Div" or all((v > 0).all() for v in consts) else None
    return None


def _code_range(G: _Graph, name: str) -> tuple[int, int] | None:
    """[lo, hi] of ``name`` when it is an integer-valued tensor computed by elementwise ops
    that never decrease from a constant ``Clip`` or a comparison (``Round(Clip(x * (1/s)))``,
    N2UQ's count of threshold comparisons) and its uint8 form, the codes shifted by
    ``max(0, -lo)`` (the input zero point), lies in [0, 127] (values that the int8 kernels
    multiply without saturating int16 pair sums); else None. The range is
    the function at the extremes of its inputs: a Clip's bounds, else +-3e38."""

    def value(t: str, need_int: bool) -> np.ndarray | None:
        """[min, max] of t over all inputs, or None when t is not a function of that kind."""
        n = G.producer.get(t)
        c = G.const(t)
        if c is not None:
            return None if need_int and not np.array_equal(c, np.round(c)) else c
        if n is None or n.op_type not in ELEMENTWISE:
            return None if need_int else np.array([-_BIG, _BIG], np.float32)
        dyn = _nondecreasing(G, n)
        if dyn is None:
            return None if need_int else np.array([-_BIG, _BIG], np.float32)
        if n.op_type == "Clip" and len(n.input) == 3 and not need_int:
            lo, hi = G.const(n.input[1]), G.const(n.input[2])
            if lo is not None and hi is not None and lo.size == hi.size == 1:
                return np.array([lo, hi], np.float32).reshape(2)
        if n.op_type in _INTEGER_OUT:
            need_int = False  # integer whatever its input
        args = []
        for i in n.input:
            if not i:
                args.append(None)
                continue
            v = value(i, need_int)
            if v is None:
                return None
            args.append(v)
        try:
            out = np.asarray(_eval_node(n, args))
        except ValueError:  # a constant that does not broadcast against the [lo, hi] pair
            return None if need_int else np.array([-_BIG, _BIG], np.float32)
        # per-channel constants spread the pair over the channels (last axis: lo, hi); the
        # function is nondecreasing, so the extremes over channels bound it
        flat = out.reshape(-1, 2)
        return np.array([flat[:, 0].min(), flat[:, 1].max()], dtype=out.dtype)

    with np.errstate(over="ignore", invalid="ignore"):  # the +-3e38 extremes may overflow to inf
        v = value(name, True)
    if v is None:
        return None
    v = np.asarray(v, np.float64).reshape(-1)
    if v.size != 2 or not np.isfinite(v).all():
        return None
    lo, hi = int(v[0]), int(v[1])
    return (lo, hi) if lo <= hi and hi - min(lo, 0) <= 127 else None
