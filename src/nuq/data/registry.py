"""Datasets by name: ``load_dataset(name, data_dir, train)``."""

from __future__ import annotations

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


def load_dataset(name: str, data_dir: str | None = None, train: bool = True) -> Any:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return _DATASETS[name](data_dir=data_dir, train=train)
