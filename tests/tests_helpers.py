"""Shared test markers."""

import os
from pathlib import Path

import pytest

import nuq.quantizers

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not FMNIST.is_dir() and not os.environ.get("NUQ_DATA_DIR"),
                                reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def sigkill_after_first_checkpoint(proc, ckpt: Path, group: bool = False, timeout: float = 240) -> None:
    """SIGKILL ``proc`` (its whole process group with ``group``) as soon as ``ckpt`` exists."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), f"no checkpoint appeared at {ckpt}"


#: how a quantizer is run in the gradient-reference tests: eagerly, and through
#: torch.compile(fullgraph=True), whose traced graph takes the compile-only (unrolled) paths
MODES = ("eager", "compiled")


def run_quantizer(q, x, mode: str):
    """``q(x)`` in ``mode``. The compiled mode uses the aot_eager backend: the very graph
    (forward and backward) inductor would receive, without its C++ build."""
    if mode == "eager":
        return q(x)
    import torch

    torch._dynamo.reset()
    return torch.compile(q, backend="aot_eager", fullgraph=True)(x)


def role_for(name: str, signed: bool) -> str:
    """The role a test quantizer plays: signed ones stand for weights, unsigned ones for
    post-ReLU activations, unless the method is meant for one role only."""
    roles = nuq.quantizers.quantizer_class(name).roles
    want = "weight" if signed else "activation"
    return want if want in roles else roles[0]
