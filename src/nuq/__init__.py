"""nuq: quantization-aware training with learned uniform and non-uniform quantizers."""

__version__ = "0.1.0"

from .models import available_models, create_model  # noqa: E402
from .nn.walk import named_quantizers, param_groups, quant_layers
from .prepare import calibrate, prepare, signed_inputs  # noqa: E402
from .qconfig import QATConfig  # noqa: E402
from .quantizers import Quantizer, available_quantizers, make_quantizer, register_quantizer  # noqa: E402

__all__ = [
    "QATConfig", "Quantizer", "export", "train", "__version__", "available_models", "available_quantizers", "calibrate",
    "create_model", "make_quantizer", "named_quantizers", "param_groups", "prepare", "quant_layers",
    "register_quantizer", "signed_inputs",
]

#: subpackages reached as attributes (nuq.train.train(...), nuq.export.save_packed(...)),
#: imported on first use: exporting a model never loads the training code
_LAZY = ("export", "runs", "train")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
