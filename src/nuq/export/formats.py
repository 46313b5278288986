"""The registry of export formats: what ``nuq export --format`` offers.

A format is one function that writes a prepared model (eval mode) to a path and returns
its report (at least ``path`` and ``bytes``), registered with its file suffix::

    @register_format("myformat", suffix=".bin", help="what it is for")
    def write_myformat(model, path, source): ...

``source`` gives what a writer may need beyond the model: ``meta`` (the architecture and
the run's config, for files that rebuild the model) and ``example_input()`` (a batch to
trace with). The CLI's ``--format`` choices are :func:`available_formats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .onnx_export import to_onnx
from .packed import float32_bytes, save_packed


@dataclass
class ExportSource:
    """What a writer may ask for besides the model."""

    meta: dict[str, Any] = field(default_factory=dict)
    example_input: Callable[[], Tensor] | None = None


Writer = Callable[[nn.Module, Path, ExportSource], dict[str, Any]]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    suffix: str
    help: str
    write: Writer


_FORMATS: dict[str, ExportFormat] = {}


def register_format(name: str, suffix: str, help: str) -> Callable[[Writer], Writer]:
    def deco(fn: Writer) -> Writer:
        if name in _FORMATS:
            raise ValueError(f"export format {name!r} is already registered")
        _FORMATS[name] = ExportFormat(name, suffix, help, fn)
        return fn

    return deco


def available_formats() -> list[str]:
    """Registered format names, in registration order (the first is the default)."""
    return list(_FORMATS)


def export_format(name: str) -> ExportFormat:
    if name not in _FORMATS:
        raise ValueError(f"format={name!r}; allowed: {', '.join(_FORMATS)}")
    return _FORMATS[name]


@register_format("packed", ".nuq.safetensors",
                 "real low-bit weights and level tables in one safetensors file (load_packed)")
def _write_packed(model: nn.Module, path: Path, source: ExportSource) -> dict[str, Any]:
    return save_packed(model, path, meta=source.meta)


def _onnx(model: nn.Module, path: Path, source: ExportSource, exact: bool) -> dict[str, Any]:
    if source.example_input is None:
        raise ValueError("ONNX export needs an example input to trace the model with")
    try:
        import onnxruntime  # noqa: F401
        verify = True
    except ImportError:
        verify = False
    info = to_onnx(model, source.example_input(), path, exact=exact, verify=verify)
    fb = float32_bytes(model)
    return {**info, "float32_bytes": fb, "ratio": fb / info["bytes"]}


@register_format("onnx", ".onnx", "ONNX graph for ONNX Runtime (PyTorch's numbers), checked against PyTorch when "
                 "it is installed")
def _write_onnx(model: nn.Module, path: Path, source: ExportSource) -> dict[str, Any]:
    return _onnx(model, path, source, exact=True)


@register_format("onnx-fast", ".onnx", "ONNX graph with BatchNorm folded into the convolutions: faster, within "
                 "float32 rounding of PyTorch (a value at a quantizer threshold can move one level)")
def _write_onnx_fast(model: nn.Module, path: Path, source: ExportSource) -> dict[str, Any]:
    return _onnx(model, path, source, exact=False)
