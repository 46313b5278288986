"""A pass over the exported ONNX graph: integer layers on ONNX Runtime's uint8 kernels.

An integer layer of the export graph (:mod:`nuq.export.onnx_integer`) convolves integer
codes ``k`` with integer weights ``W`` into an exact integer ``acc``. When everything
between that convolution and the next quantizer is elementwise and per channel -- the
rescale, bias, BatchNorm's ``a*x + b``, ReLU, the next quantizer's ``Mul(1/s) -> Clip ->
Round`` or N2UQ's threshold count -- the next layer's codes are a monotone step function
``code_c(acc)`` of that integer, one per output channel, fixed by a few integer thresholds.

:func:`fuse_requantize` evaluates that function exactly (the same float32 operations, in
NumPy, on every ``acc`` the layer can produce) and writes the layer as one ``QLinearConv``
whose requantization reproduces it:

    code = clip(round((K_c * acc + B_c) * M_c), lo, hi)

with an integer weight multiplier ``K_c`` (``K_c * W`` stays int8; a negative ``K_c`` for a
channel whose BatchNorm scale is negative), an int32 bias ``B_c`` and a float scale
``M_c``, fitted so that every threshold falls mid-way between two integers of ``acc``.
The fit is checked on every reachable ``acc`` with a margin of ``MARGIN`` code units from
each rounding tie, so any float evaluation order gives the same codes: the output is the
PyTorch model's codes, bit for bit. A layer where no such fit exists keeps its float graph.

Inputs of these layers become uint8 (``QuantizeLinear`` at scale 1 in place of the
``Round``, with a zero point of ``-lo`` for signed codes in [lo, hi], e.g. the inputs of
MobileNetV2's expansion layers; or the previous ``QLinearConv``'s output); layers that still need float codes
(e.g. the convolution before a residual add) read them through a ``Cast``. Bias-free
uint8 activations times int8 weights is the layout ONNX Runtime's MLAS kernels run fastest.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .onnx_graph import _drop_unused, attributes
from .onnx_numpy import ELEMENTWISE, _eval_node, _Graph, _per_channel
from .onnx_range import _code_range

#: distance (in code units) every requantized value keeps from a rounding tie: float32
#: rounding of (K*acc + B) * M moves a value below 255 by at most 255 * 2^-24 = 1.5e-5, so
#: any order of evaluating it in float32 gives the same codes
MARGIN = 1e-4
#: at most this many acc values per channel are evaluated (4-bit layers: ~140k)
MAX_RANGE = 1 << 20

def _region(G: _Graph, start: str, channels: int) -> tuple[list[Any], str] | None:
    """The elementwise nodes from ``start`` (a Conv output) to the one tensor they hand to
    integer convolutions (input 0), in topological order, or None when that part of the
    graph is not such a region (an input from elsewhere, a second exit, a graph output, a
    constant that varies over more than the channel)."""
    nodes: list[Any] = []
    inside, ends, frontier = {start}, set(), [start]
    while frontier:
        t = frontier.pop()
        uses = G.consumers.get(t, [])
        if t in G.outputs or not uses:
            return None
        if t != start and all(n.op_type == "Conv" and i == 0 and G.integer_weight(n) is not None for n, i in uses):
            ends.add(t)
            continue
        for n, _ in uses:
            if n.op_type not in ELEMENTWISE:
                return None
            if any(n is m for m in nodes):
                continue
            if any(i not in inside for i in n.input if i and G.const(i) is None):
                continue  # waits for its other dynamic inputs
            if not all(_per_channel(G.const(i), channels) for i in n.input if i and G.const(i) is not None):
                return None
            nodes.append(n)
            inside.update(n.output)
            frontier.extend(n.output)
    if len(ends) != 1:
        return None
    # a node that never got in (an input from outside) reads a tensor of the region
    for n in nodes:
        if any(not any(m is k for k in nodes) and o not in ends for o in n.output for m, _ in G.consumers.get(o, [])):
            return None
    return [n for n in G.g.node if any(n is m for m in nodes)], next(iter(ends))


def _code_function(G: _Graph, nodes: list[Any], start: str, end: str, acc: np.ndarray) -> np.ndarray:
    """The region evaluated on ``acc`` ([N, C] float32 values of the conv output)."""
    vals = {start: acc.astype(np.float32)[:, :, None, None]}
    for n in nodes:
        args = [vals[i] if i in vals else (G.const(i) if i else None) for i in n.input]
        vals[n.output[0]] = _eval_node(n, args)
    return np.asarray(vals[end], dtype=np.float64)[:, :, 0, 0]


def _line(v: np.ndarray, code: np.ndarray, thr: np.ndarray) -> tuple[float, float]:
    """(d, e): threshold i near ``d * (i - 0.5) + e`` in v -- the Chebyshev (minimax) line
    through the threshold centres ``thr - 0.5``, whose best slope lies where two of the
    constraints cross; with fewer than two thresholds a line too steep to reach another."""
    j = np.arange(int(code[0]) + 1, int(code[-1]) + 1) - 0.5
    span = float(v[-1] - v[0] + 1)
    if len(thr) == 0:
        return 2 * span, float(v[0] + v[-1]) / 2 - 2 * span * float(code[0])
    if len(thr) == 1:
        return 2 * span, float(thr[0]) - 0.5 - 2 * span * float(j[0])
    c = thr - 0.5
    best = (np.inf, 2 * span, 0.0)
    for a in range(len(j)):
        for b in range(a + 1, len(j)):
            d = (c[a] - c[b]) / (j[a] - j[b])
            if d > 0:
                r = c - d * j
                dev = (r.max() - r.min()) / 2
                if dev < best[0]:
                    best = (dev, d, (r.max() + r.min()) / 2)
    return best[1], best[2]


def _fit_channel(v: np.ndarray, code: np.ndarray, glo: int, ghi: int, kmag: int) -> tuple[int, float] | None:
    """(B, M) with clip(round((kmag * v + B) * M), glo, ghi) == code on every v (ascending
    integers; code nondecreasing), each value at least MARGIN from a rounding tie; None
    when there is none.

    For a bias B the conditions on M are exact intervals: with u = kmag * v + B, code >= i
    from the threshold T_i on means ``u(T_i) * M >= i - 1/2 + MARGIN`` and
    ``u(T_i - 1) * M <= i - 1/2 - MARGIN`` (levels the channel never leaves or never
    reaches bound u at the range's ends the same way). The line fit gives the bias to
    start from; nearby biases are tried, the widest interval of M wins and its geometric
    middle is taken."""
    levels = np.arange(int(code[0]) + 1, int(code[-1]) + 1)
    thr = v[np.searchsorted(code, levels, side="left")].astype(np.float64)  # first v with code >= i
    d, e = _line(v, code, thr)
    # (u index, tie) pairs: u at or above the tie (low bound on M), u below it (high bound)
    above = [(t, i - 0.5) for t, i in zip(thr, levels)]
    below = [(t - 1, i - 0.5) for t, i in zip(thr, levels)]
    if code[0] > glo:
        above.append((float(v[0]), code[0] - 0.5))
    if code[-1] < ghi:
        below.append((float(v[-1]), code[-1] + 0.5))
    b0 = int(np.round(-e * kmag))
    best = None
    for b in range(b0 - kmag, b0 + kmag + 1):
        lo, hi = 1e-30, np.inf
        ok = True
        for t, tie in above:
            u = kmag * t + b
            if u <= 0:
                ok = False
                break
            lo = max(lo, (tie + MARGIN) / u)
        for t, tie in below:
            u = kmag * t + b
            if u > 0:
                hi = min(hi, (tie - MARGIN) / u)
            elif tie - MARGIN < 0:
                ok = False
        if not ok or lo >= hi:
            continue
        width = np.log(hi / lo) if np.isfinite(hi) else np.inf
        if best is None or width > best[0]:
            best = (width, b, lo, hi)
    if best is None:
        return None
    _, b, lo, hi = best
    if abs(b) + kmag * float(np.abs(v).max()) >= 2**24:
        return None  # the int32 sum would not convert to float exactly
    m = np.float32(np.sqrt(lo * hi) if np.isfinite(hi) else 2 * lo)
    u = (kmag * v + b).astype(np.float32)
    y = (u * m).astype(np.float32).astype(np.float64)
    got = np.clip(np.clip(np.rint(y), 0, 255), glo, ghi)
    frac = np.abs(y - np.floor(y) - 0.5)  # distance from the nearest tie
    # ties outside (glo, ghi) round to values the clip maps to the same code
    if not np.array_equal(got, code) or (frac[(y > glo) & (y < ghi)] < MARGIN).any():
        return None
    return b, float(m)


def _fit(w: np.ndarray, klo: int, khi: int, fn) -> dict[str, np.ndarray] | None:
    """Requantization parameters of a conv with integer weights ``w`` [O, I, kh, kw] on
    codes in [klo, khi], whose next codes are ``fn(acc)`` per channel; or None."""
    n_out = w.shape[0]
    flat = w.reshape(n_out, -1)
    lo_in = min(klo, 0)  # zero padding adds zeros
    amax = (np.maximum(flat * khi, flat * lo_in)).sum(1)
    amin = (np.minimum(flat * khi, flat * lo_in)).sum(1)
    if (amax - amin + 1).max() > MAX_RANGE or max(abs(amin).max(), abs(amax).max()) * 127 >= 2**24:
        return None
    n = int((amax - amin).max()) + 1
    acc = amin[None, :] + np.arange(n)[:, None]  # [n, O]; rows past a channel's amax repeat it
    acc = np.minimum(acc, amax[None, :])
    codes = fn(acc.astype(np.float32))
    if not np.array_equal(codes, np.round(codes)) or codes.min() < 0 or codes.max() > 255:
        return None
    glo, ghi = int(codes.min()), int(codes.max())
    K = np.zeros(n_out, np.int64)
    B = np.zeros(n_out, np.int64)
    M = np.zeros(n_out, np.float32)
    for c in range(n_out):
        m_c = int(amax[c] - amin[c]) + 1
        a, code = acc[:m_c, c], codes[:m_c, c]
        sign = 1 if code[-1] >= code[0] else -1
        v = sign * a
        order = np.argsort(v, kind="stable")
        v, code = v[order], code[order]
        if np.any(np.diff(code) < 0):
            return None
        wmax = max(int(np.abs(flat[c]).max()), 1)
        for kmag in (127 // wmax, max(127 // wmax // 2, 1), 1):
            fit = _fit_channel(v, code, glo, ghi, kmag)
            if fit is not None:
                break
        if fit is None:
            return None
        K[c], (B[c], M[c]) = sign * kmag, fit
    return {"weight": (w * K[:, None, None, None]).astype(np.int8), "bias": B.astype(np.int32),
            "scale": M, "lo": glo, "hi": ghi}


def fuse_requantize(model: Any) -> list[str]:
    """Rewrite the integer layers of ``model`` (an ``onnx.ModelProto``) whose codes and
    next codes allow it as QLinearConv (in place); returns the rewritten Conv nodes' names."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    G = _Graph(g)
    u8_of: dict[str, str] = {}  # float codes tensor -> its uint8 twin
    ranges: dict[str, tuple[int, int]] = {}
    shift: dict[str, int] = {}  # float codes tensor -> the zero point of its uint8 twin
    plans = []
    for conv in list(g.node):
        if conv.op_type != "Conv" or (w := G.integer_weight(conv)) is None:
            continue
        src = conv.input[0]
        rng = ranges.get(src) or _code_range(G, src)
        if rng is None:
            continue
        reg = _region(G, conv.output[0], w.shape[0])
        if reg is None:
            continue
        nodes, end = reg
        fit = _fit(w, rng[0], rng[1], functools.partial(_code_function, G, nodes, conv.output[0], end))
        if fit is None:
            continue
        ranges[end] = (fit["lo"], fit["hi"])
        shift[src] = max(0, -rng[0])
        plans.append((conv, nodes, end, fit))
    if not plans:
        return []
    new_init = []
    removed = {id(n) for p in plans for n in p[1]}
    plan_of = {id(p[0]): p for p in plans}
    fused_inputs = {p[0].input[0] for p in plans}
    out_nodes = []
    zp_of: dict[str, str] = {}  # uint8 codes from QuantizeLinear -> their zero point
    for n in g.node:
        if id(n) in removed:
            continue
        plan = plan_of.get(id(n))
        if plan is None:
            o = n.output[0]
            if o not in fused_inputs or o in u8_of:
                out_nodes.append(n)
                continue
            # float codes into uint8 (scale 1 and a zero point that makes signed codes
            # non-negative: exact for integers whose shifted values lie in [0, 127]);
            # QuantizeLinear rounds half to even like the Round it replaces when nothing
            # else reads the float codes. QLinearConv pads with the zero point, i.e. code 0.
            only_fused = all(id(c) in plan_of for c, _ in G.consumers.get(o, []))
            src = n.input[0] if n.op_type == "Round" and only_fused else o
            if src == o:
                out_nodes.append(n)
            u8_of[o] = o + "__u8"
            zp_of[u8_of[o]] = o + "__zp"
            new_init += [numpy_helper.from_array(np.array(shift[o], np.uint8), o + "__zp"),
                         numpy_helper.from_array(np.ones((), np.float32), o + "__one")]
            out_nodes.append(helper.make_node("QuantizeLinear", [src, o + "__one", o + "__zp"], [u8_of[o]]))
            continue
        conv, nodes, end, fit = plan
        base = conv.output[0]
        names = {k: f"{base}__q{k}" for k in ("one", "zp", "w", "wscale", "wzp", "bias", "lo", "hi", "raw")}
        new_init += [
            numpy_helper.from_array(np.ones((), np.float32), names["one"]),
            numpy_helper.from_array(np.zeros((), np.uint8), names["zp"]),
            numpy_helper.from_array(fit["weight"], names["w"]),
            numpy_helper.from_array(fit["scale"].astype(np.float32), names["wscale"]),
            numpy_helper.from_array(np.zeros(fit["weight"].shape[0], np.int8), names["wzp"]),
            numpy_helper.from_array(fit["bias"], names["bias"]),
            numpy_helper.from_array(np.array(fit["lo"], np.uint8), names["lo"]),
            numpy_helper.from_array(np.array(fit["hi"], np.uint8), names["hi"]),
        ]
        x = u8_of[conv.input[0]]
        attrs = attributes(conv)
        out_nodes.append(helper.make_node(
            "QLinearConv", [x, names["one"], zp_of.get(x, names["zp"]), names["w"], names["wscale"], names["wzp"],
                            names["one"], names["zp"], names["bias"]], [names["raw"]], **attrs))
        u8 = end + "__u8"
        out_nodes.append(helper.make_node("Clip", [names["raw"], names["lo"], names["hi"]], [u8]))
        u8_of[end] = u8
        # convolutions that stay float read the codes as float
        if any(id(c) not in plan_of for c, _ in G.consumers.get(end, [])):
            out_nodes.append(helper.make_node("Cast", [u8], [end], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(out_nodes)
    g.initializer.extend(new_init)
    _drop_unused(g)
    return [p[0].name or p[0].output[0] for p in plans]
