"""Quantizers: the interface, the registry, and one module per method.

Every module of this package is imported here, so a new method is registered by
adding one file with one ``@register_quantizer`` class.
"""

import importlib
import pkgutil

from .base import (
    Quantizer,
    available_quantizers,
    make_quantizer,
    quantizer_class,
    register_quantizer,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "initializers", "rcf"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["Quantizer", "available_quantizers", "make_quantizer", "quantizer_class", "register_quantizer"]
