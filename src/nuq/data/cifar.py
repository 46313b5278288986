"""CIFAR-10 / CIFAR-100 from their standard python-pickle directories.

``cifar-10-batches-py/`` holds ``data_batch_1..5`` and ``test_batch`` (keys ``data``,
``labels``); ``cifar-100-python/`` holds ``train`` and ``test`` (keys ``data``,
``fine_labels``). ``data`` is [N, 3072] uint8, channel-major 32x32. The pickles hold
only numpy arrays, lists and bytes, and are read with a restricted unpickler that
refuses anything else.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from .tensor_data import TensorDataset

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise ValueError(f"refusing to unpickle {module}.{name}: not a CIFAR data file")


def _load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing CIFAR file {path}")
    with path.open("rb") as f:
        obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find(data_dir: str | None, sub: str, name: str) -> Path:
    cands = []
    base = Path(data_dir) if data_dir else (Path(os.environ["NUQ_DATA_DIR"]) if "NUQ_DATA_DIR" in os.environ else None)
    if base is not None:
        cands = [base / sub, base]
    for d in cands:
        if d.is_dir() and any(d.iterdir()):
            return d
    looked = ", ".join(map(str, cands)) or "nowhere: no data_dir given"
    raise FileNotFoundError(f"{name} not found (looked in: {looked}); download the python version of {name} "
                            f"and pass --data-dir pointing to the folder holding '{sub}'")


def _dataset(batches: list[dict], label_key: str, mean, std, num_classes: int, path: Path) -> TensorDataset:
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as e:
        raise ValueError(f"{path}: CIFAR batch lacks key {e}") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data [N, 3072] and N labels, got {data.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{path}: labels outside 0..{num_classes - 1}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return TensorDataset(images, torch.from_numpy(labels), mean, std, num_classes)


def cifar10(data_dir: str | None = None, train: bool = True) -> TensorDataset:
    d = _find(data_dir, "cifar-10-batches-py", "CIFAR-10")
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return _dataset([_load(d / n) for n in names], "labels", CIFAR10_MEAN, CIFAR10_STD, 10, d)


def cifar100(data_dir: str | None = None, train: bool = True) -> TensorDataset:
    d = _find(data_dir, "cifar-100-python", "CIFAR-100")
    return _dataset([_load(d / ("train" if train else "test"))], "fine_labels", CIFAR100_MEAN, CIFAR100_STD, 100, d)
