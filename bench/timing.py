"""Shared timing of the benchmarks: candidates take turns, one call each per round, so that
drift on a shared machine hits every candidate alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable


def interleaved_medians(fns: dict[Hashable, Callable[[], None]], rounds: int) -> dict[Hashable, float]:
    """Median wall time of each function over ``rounds`` interleaved rounds (warm them up first)."""
    times: dict[Hashable, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
