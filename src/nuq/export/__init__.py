"""Deployment: integer codes + level tables, a packed low-bit file, ONNX, and an
integer-arithmetic reference.

    from nuq.export import save_packed, load_packed, to_onnx, integer_forward

    info = save_packed(qmodel, "model.nuq.safetensors", meta={"model": {"name": "resnet20", "kwargs": {}},
                                                      "num_classes": 10, "in_channels": 1})
    model = load_packed("model.nuq.safetensors")          # outputs == qmodel.eval() outputs, exactly
    to_onnx(qmodel, example_batch, "model.onnx")   # uint8 QLinearConv for uniform, threshold comparisons else
    y = integer_forward(layer, x)                  # one layer from integer codes

Everything goes through the generic quantizer interface (``levels()``, ``encode()``,
``decode()``, the quantizer itself), so every registered method is covered; only the
integer fast paths look at the shape of a level table (a uniform grid, or APoT's sums of
powers of two). Format details: :mod:`nuq.export.container` (the file) and
:mod:`nuq.export.packed` (what is stored).
"""

from .integer import integer_forward, integer_levels, integer_plan
from .onnx_export import export_model, to_onnx
from .packed import FORMAT_VERSION, load_packed, read_header, save_packed

__all__ = ["FORMAT_VERSION", "export_model", "integer_forward", "integer_levels", "integer_plan", "load_packed",
           "read_header", "save_packed", "to_onnx"]
