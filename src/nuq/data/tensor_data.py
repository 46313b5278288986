"""Tensor-resident datasets and a fast batched loader.

Small image sets (Fashion-MNIST, CIFAR) fit in memory as uint8; a batch is gathered,
augmented on the whole batch at once (random crop with zero padding, horizontal flip)
and normalised, with no per-sample Python work. The shuffling and augmentation of an
epoch depend only on (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one, and ranks of a distributed run take disjoint shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TensorDataset:
    images: Tensor  # [N, C, H, W] uint8
    labels: Tensor  # [N] int64
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    def subset(self, n: int | None, seed: int = 0) -> TensorDataset:
        """A class-balanced-in-expectation random subset of ``n`` samples (None = all)."""
        idx = subset_indices(len(self), n, seed)
        if idx is None:
            return self
        return TensorDataset(self.images[idx], self.labels[idx], self.mean, self.std, self.num_classes)

    def normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255) - mean) / std

    def example_batch(self, n: int) -> Tensor:
        """The first ``n`` images, normalised."""
        return self.normalize(self.images[:n])


def random_crop_flip(x: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip of [B, C, H, W]."""
    b, c, h, w = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(b, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def subset_indices(length: int, n: int | None, seed: int) -> Tensor | None:
    """Indices of a seeded random subset of ``n`` of ``length`` samples, or None when ``n``
    asks for everything (None or >= length)."""
    if n is None or n >= length:
        return None
    if n < 1:
        raise ValueError(f"subset={n}; allowed: a positive int or None")
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:n]


def epoch_indices(n: int, train: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """Sample order of one epoch: a permutation fixed by (seed, epoch) when training, else
    0..n-1; under DDP each rank takes its own contiguous shard (equal sizes in training)."""
    if train:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    else:
        idx = torch.arange(n)
    if world_size > 1:
        per = n // world_size if train else -(-n // world_size)
        idx = idx[rank * per:(rank + 1) * per]
    return idx


class TensorLoader:
    """Iterates over (normalised image batch, labels) of a :class:`TensorDataset`."""

    def __init__(self, data: TensorDataset, batch_size: int, train: bool, seed: int = 0, pad: int = 2,
                 flip: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; allowed: a positive int")
        self.data, self.batch_size, self.train = data, batch_size, train
        self.seed, self.pad, self.flip = seed, pad, flip
        self.rank, self.world_size = rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        return epoch_indices(len(self.data), self.train, self.seed, self.epoch, self.rank, self.world_size)

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices()
        gen = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + 1)
        for i in range(len(self)):
            j = idx[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.data.images[j]
            if self.train and (self.pad or self.flip):
                x = random_crop_flip(x, self.pad, self.flip, gen)
            yield self.data.normalize(x), self.data.labels[j]
