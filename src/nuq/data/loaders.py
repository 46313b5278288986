"""``make_loader``: the loader that fits a dataset (tensor-resident or image folders)."""

from __future__ import annotations

from .image_folder import FolderDataset, FolderLoader
from .tensor_data import TensorDataset, TensorLoader


def make_loader(data: TensorDataset | FolderDataset, batch_size: int, train: bool, seed: int = 0, pad: int = 2,
                flip: bool = True, rank: int = 0, world_size: int = 1, workers: int = 4,
                drop_last: bool | None = None) -> TensorLoader | FolderLoader:
    """Batches of ``data``: whole-batch tensor ops for in-memory sets (``pad``: random-crop
    padding), ``workers`` decoding processes for image folders (random resized crops)."""
    if isinstance(data, FolderDataset):
        return FolderLoader(data, batch_size, train, seed=seed, flip=flip, rank=rank, world_size=world_size,
                            workers=workers, drop_last=drop_last)
    return TensorLoader(data, batch_size, train, seed=seed, pad=pad, flip=flip, rank=rank, world_size=world_size,
                        drop_last=drop_last)
