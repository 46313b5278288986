"""Learning-rate schedule: linear warm-up then cosine (or linear) decay to zero, as a
per-step multiplier (nuLSQ supplement C-I/C-II: "cosine learning rate decay with the
linear warm-up"; N2UQ Sec. 4.1: linear decay)."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str = "cosine", start: float = 1e-3) -> float:
    """Multiplier of the base lr at optimizer step ``step`` of ``total``."""
    if warmup > 0 and step < warmup:
        return start + (1.0 - start) * step / warmup
    if kind == "constant":
        return 1.0
    t = (step - warmup) / max(1, total - warmup)
    t = min(max(t, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - t
    return 0.5 * (1.0 + math.cos(math.pi * t))
