"""Datasets by name: ``load_dataset(name, data_dir, train)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .cifar import cifar10, cifar100
from .fashion_mnist import fashion_mnist
from .image_folder import image_folder

_DATASETS: dict[str, Callable[..., Any]] = {
    "fashion_mnist": fashion_mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "imagenet": image_folder,
}


def register_dataset(name: str, fn: Callable[..., Any]) -> None:
    _DATASETS[name] = fn


def available_datasets() -> list[str]:
    return sorted(_DATASETS)


def load_dataset(name: str, data_dir: str | None = None, train: bool = True, image_size: int | None = None) -> Any:
    """``image_size``: the crop size of datasets decoded from image files (None: their
    default); datasets of fixed-size tensors refuse it."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    fn = _DATASETS[name]
    if image_size is None:
        return fn(data_dir=data_dir, train=train)
    if "image_size" not in inspect.signature(fn).parameters:
        resizable = [n for n, f in _DATASETS.items() if "image_size" in inspect.signature(f).parameters]
        raise ValueError(f"data.image_size={image_size!r}: dataset {name!r} has a fixed image size; image_size "
                         f"applies to {', '.join(resizable)}")
    return fn(data_dir=data_dir, train=train, image_size=image_size)
