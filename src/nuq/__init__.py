"""nuq: quantization-aware training with learned uniform and non-uniform quantizers."""

__version__ = "0.1.0"

# subpackages used as nuq.train.train(...), nuq.export.save_packed(...) (onnx is imported lazily)
from . import export, train  # noqa: E402
from .models import available_models, create_model  # noqa: E402
from .prepare import calibrate, named_quantizers, prepare, quant_layers, signed_inputs  # noqa: E402
from .qconfig import QATConfig  # noqa: E402
from .quantizers import Quantizer, available_quantizers, make_quantizer, register_quantizer  # noqa: E402

__all__ = [
    "QATConfig", "Quantizer", "export", "train", "__version__", "available_models", "available_quantizers", "calibrate",
    "create_model", "make_quantizer", "named_quantizers", "prepare", "quant_layers", "register_quantizer",
    "signed_inputs",
]
