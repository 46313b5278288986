"""How a run is computed, not what it computes: precision, memory format, compilation.

``train:`` in a run config::

    train:
      precision: fp32        # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler, CUDA only)
      channels_last: false   # NHWC activations and weights (faster convolutions on AMX/Tensor Cores)
      compile: false         # true: torch.compile the model, quantizers included;
                             # quantizers: compile each quantizer module alone (the same
                             # step on CPU here, a fraction of the warm-up; see README Speed)
      log_every: 50          # steps between reads of the device-side loss sums (NaN guard, progress bar)

These settings are not part of a run's identity: a checkpoint written under one resumes
under another (see ``RunConfig.identity``). Quantizers compute in float32 inside autocast
(``quantizers.base.compute_dtype``), so a bf16 run quantizes to the same levels as fp32 for
the same input; the convolutions around them run in the lower precision.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings

import torch
from torch import nn

from ..nn.walk import named_quantizers
from ..runs.config import COMPILE_MODES, PRECISIONS, TrainConfig  # noqa: F401 (re-exported)

_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_execution(cfg: TrainConfig, device: torch.device) -> None:
    """Refuse settings this machine cannot run, with the reason and the alternative."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError(f"train.precision='fp16' needs a CUDA device (this run is on {device.type}); "
                         "use 'bf16' on CPU, or 'fp32'")
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("train.precision='bf16' is not supported by this GPU; use 'fp16' or 'fp32'")
    if cfg.precision == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        warnings.warn("train.precision='bf16' on a CPU without native bf16 (AVX512-BF16 or AMX): the "
                      "convolutions are emulated and run several times slower than fp32", stacklevel=2)
    if cfg.compile:
        reason = compile_unavailable(device)
        if reason:
            raise ValueError(f"train.compile={str(cfg.compile).lower()}: {reason}; set train.compile: false")


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 convolutions natively (oneDNN's check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (None when it can)."""
    try:
        import torch._dynamo as dynamo
    except Exception as e:  # pragma: no cover - broken installs
        return f"torch.compile cannot be imported ({e})"
    if not dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this Python/PyTorch build"
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"
    return None


def autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``cfg.precision`` (a no-op for fp32)."""
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPE[cfg.precision])


def grad_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None


def to_memory_format(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def input_format(x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    if cfg.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def maybe_compile(model: nn.Module, cfg: TrainConfig, fresh: bool = True) -> nn.Module:
    """``torch.compile(model)`` when asked (the module itself stays the one checkpointed);
    with ``compile: quantizers``, each quantizer module compiled in place instead
    (``nn.Module.compile``: its forward and backward become generated kernels, everything
    else stays eager, and the model is returned as it is).

    With ``fresh``, dynamo's caches of earlier models in this process are dropped first. The
    layer and quantizer forwards are shared code that dynamo guards on the quantizer's
    class and settings, so every run of another method or bit width recompiles them, and
    after ``recompile_limit`` (8) variants dynamo runs the rest eagerly with only a log
    line: the later cells of a ``nuq compare`` grid would silently train uncompiled."""
    if not cfg.compile:
        return model
    if fresh:
        torch.compiler.reset()
    if cfg.compile == "quantizers":
        quantizers = [q for _, q in named_quantizers(model)]
        # every quantizer runs the same forward code, and dynamo keeps one cache per code
        # object: each layer's shapes, weight or activation, training or eval is a variant of
        # it. Past recompile_limit (8) the remaining layers would run eagerly, silently.
        dyn = torch._dynamo.config
        dyn.recompile_limit = max(dyn.recompile_limit, 4 * len(quantizers))
        dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 8 * len(quantizers))
        for q in quantizers:
            q.compile()
        return model
    return torch.compile(model)
