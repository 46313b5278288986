"""Weight transforms registry; every module of this package is imported so that each
file's ``@register_transform`` classes are available by name."""

import importlib
import pkgutil

from .base import available_transforms, make_transform, register_transform

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["available_transforms", "make_transform", "register_transform"]
