"""ImageNet-style class folders, decoded on the fly by a multi-worker loader.

Layout (the standard ImageNet one; any image set arranged this way works)::

    data_dir/train/<class>/<image>.JPEG
    data_dir/val/<class>/<image>.JPEG

Classes are the sorted sub-folder names of ``train/`` (``val/`` must use the same names).
Images are decoded with Pillow (a dependency of matplotlib, so always present) and
transformed with the standard recipe: training -- random resized crop (scale 0.08-1,
aspect 3/4-4/3) to ``image_size`` and a horizontal flip; evaluation -- resize the shorter
side to ``resize`` and centre-crop ``image_size``. Normalisation uses the ImageNet
mean/std. torchvision is not needed for any of it.

Augmentation draws from a generator seeded by (seed, epoch, sample index), so a batch does
not depend on which worker decoded it: a resumed run sees the same batches as an
uninterrupted one, and ranks of a distributed run read disjoint shards
(:func:`nuq.data.tensor_data.epoch_indices`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from .tensor_data import epoch_indices, subset_indices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


@dataclass
class FolderDataset:
    files: list[str]
    labels: Tensor  # [N] int64
    classes: list[str]
    image_size: int = 224
    resize: int = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = field(default=3)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: int | None, seed: int = 0) -> FolderDataset:
        """A random subset of ``n`` images (None = all)."""
        idx = subset_indices(len(self), n, seed)
        if idx is None:
            return self
        return replace(self, files=[self.files[i] for i in idx.tolist()], labels=self.labels[idx])

    def normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float().div_(255) - mean) / std

    def load(self, i: int, gen: torch.Generator | None = None, flip: bool = True) -> Tensor:
        """Image ``i`` as uint8 [3, S, S]: training transform with ``gen``, else evaluation."""
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                if gen is None:
                    im = _center_crop(im, self.resize, self.image_size)
                else:
                    im = _random_resized_crop(im, self.image_size, gen)
        except (OSError, SyntaxError, ValueError) as e:  # PIL: truncated or not an image
            raise ValueError(f"cannot decode image {self.files[i]}: {e}") from None
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3)
        x = x.permute(2, 0, 1).contiguous()
        if gen is not None and flip and torch.rand((), generator=gen) < 0.5:
            x = x.flip(2)
        return x

    def example_batch(self, n: int) -> Tensor:
        """The first ``n`` images, evaluation transform, normalised."""
        return self.normalize(torch.stack([self.load(i) for i in range(min(n, len(self)))]))


def _center_crop(im, resize: int, size: int):
    from PIL import Image

    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def _random_resized_crop(im, size: int, gen: torch.Generator):
    from PIL import Image

    w, h = im.size
    area = w * h
    for _ in range(10):
        target = area * (0.08 + 0.92 * torch.rand((), generator=gen).item())
        log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand((), generator=gen).item()
        cw = round(math.sqrt(target * math.exp(log_r)))
        ch = round(math.sqrt(target / math.exp(log_r)))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(torch.randint(0, w - cw + 1, (), generator=gen))
            top = int(torch.randint(0, h - ch + 1, (), generator=gen))
            return im.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    side = min(w, h)  # fallback: the central square
    left, top = (w - side) // 2, (h - side) // 2
    return im.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))


def scan_folders(root: Path) -> tuple[list[str], list[int], list[str]]:
    """(files, labels, classes) of a class-folder tree; ValueError naming the path if it is
    missing or holds no images."""
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist (expected {root}/<class>/<image>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    files, labels, empty = [], [], []
    for label, c in enumerate(classes):
        found = [p for p in sorted((root / c).rglob("*")) if p.suffix.lower() in EXTENSIONS and p.is_file()]
        empty += [] if found else [c]
        files += [str(p) for p in found]
        labels += [label] * len(found)
    if empty and files:
        raise ValueError(f"image folder {root}: class folder(s) {', '.join(empty[:5])} hold no images; a class "
                         "with no examples would still count as a class (remove the folder or add its images)")
    if not files:
        raise ValueError(f"image folder {root} holds no images with an extension in {', '.join(EXTENSIONS)}")
    return files, labels, classes


def image_folder(data_dir: str | None = None, train: bool = True, image_size: int = 224,
                 resize: int | None = None) -> FolderDataset:
    """The ``train`` or ``val`` split of an ImageNet-style directory, as ``image_size``
    square crops: random-resized crops for training, for eval the centre crop of the image
    resized to ``resize`` on its short side (default: image_size * 256/224, the usual ratio)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"data.image_size={image_size!r}; allowed: an int >= 8")
    resize = round(image_size * 256 / 224) if resize is None else resize
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < image_size:
        raise ValueError(f"resize={resize!r}; allowed: an int >= image_size ({image_size})")
    if data_dir is None:
        raise ValueError("dataset 'imagenet' needs data.data_dir (--data-dir): a folder with train/ and val/ "
                         "class folders")
    root = Path(data_dir)
    files, labels, classes = scan_folders(root / ("train" if train else "val"))
    if not train:
        train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir()) \
            if (root / "train").is_dir() else classes
        if classes != train_classes:
            raise ValueError(f"{root}/val and {root}/train have different class folders")
    return FolderDataset(files, torch.tensor(labels, dtype=torch.int64), classes, image_size, resize)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, data: FolderDataset, train: bool, seed: int, epoch: int, flip: bool) -> None:
        self.data, self.train, self.seed, self.epoch, self.flip = data, train, seed, epoch, flip

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        gen = None
        if self.train:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        return self.data.load(i, gen, self.flip), self.data.labels[i]


class FolderLoader:
    """Iterates over (normalised image batch, labels) of a :class:`FolderDataset` with
    ``workers`` decoding processes; same interface and sharding as ``TensorLoader``."""

    def __init__(self, data: FolderDataset, batch_size: int, train: bool, seed: int = 0, flip: bool = True,
                 rank: int = 0, world_size: int = 1, workers: int = 4, drop_last: bool | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; allowed: a positive int")
        self.data, self.batch_size, self.train, self.seed, self.flip = data, batch_size, train, seed, flip
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        idx = epoch_indices(len(self.data), self.train, self.seed, self.epoch, self.rank, self.world_size).tolist()
        n = len(idx) // self.batch_size if self.drop_last else -(-len(idx) // self.batch_size)
        return [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n)]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        samples = _Samples(self.data, self.train, self.seed, self.epoch, self.flip)
        loader = torch.utils.data.DataLoader(samples, batch_sampler=self._batches(), num_workers=self.workers,
                                             persistent_workers=False)
        for x, y in loader:
            yield self.data.normalize(x), y
