"""Fashion-MNIST (Xiao et al., 2017) from its standard IDX files.

Looks in ``data_dir`` (default ``$NUQ_DATA_DIR/fashion-mnist`` or
``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` package
installs them) for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with or without
``.gz``. The whole set is held as tensors (60k x 28 x 28 bytes is 47 MB).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .tensor_data import TensorDataset

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
MEAN, STD = 0.2860, 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass --data-dir / "
                 "data.data_dir pointing to a folder with the four IDX files")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as e:  # a truncated or damaged .gz
        raise ValueError(f"{path} cannot be read ({e}); the file is truncated or damaged, reinstall it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} elements, file holds {arr.size} (truncated?)")
    return arr.reshape(shape)


def find_dir(data_dir: str | os.PathLike | None) -> Path:
    candidates = [Path(data_dir)] if data_dir else []
    if not data_dir:
        env = os.environ.get("NUQ_DATA_DIR")
        if env:
            candidates.append(Path(env) / "fashion-mnist")
        candidates += [Path(d) for d in DEFAULT_DIRS]
    for d in candidates:
        if d.is_dir() and _file(d, "train-images-idx3-ubyte") is not None:
            return d
    looked = ", ".join(str(d) for d in candidates)
    raise FileNotFoundError(f"Fashion-MNIST not found (looked in: {looked}); {_INSTALL_HINT}")


def _file(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def load_split(d: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if train else "t10k"
    img_f, lab_f = _file(d, f"{prefix}-images-idx3-ubyte"), _file(d, f"{prefix}-labels-idx1-ubyte")
    if img_f is None or lab_f is None:
        raise FileNotFoundError(f"{d} lacks the {prefix} IDX files; {_INSTALL_HINT}")
    images, labels = read_idx(img_f), read_idx(lab_f)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{d}: {prefix} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise ValueError(f"{lab_f}: labels must lie in 0..9 (Fashion-MNIST has 10 classes), found "
                         f"{int(labels.min())}..{int(labels.max())}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def fashion_mnist(data_dir: str | None = None, train: bool = True) -> TensorDataset:
    images, labels = load_split(find_dir(data_dir), train)
    return TensorDataset(images, labels, mean=(MEAN,), std=(STD,), num_classes=10)
