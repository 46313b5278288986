"""nuq: quantization-aware training with learned uniform and non-uniform quantizers."""

from .quantizers import Quantizer, available_quantizers, make_quantizer, register_quantizer

__version__ = "0.1.0"

__all__ = ["Quantizer", "__version__", "available_quantizers", "make_quantizer", "register_quantizer"]
