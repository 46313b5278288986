"""IDX reading on files made on the fly; loader determinism and augmentation."""

import gzip
import struct

import numpy as np
import pytest
import torch

from nuq.data import TensorLoader, fashion_mnist
from nuq.data.tensor_data import random_crop_flip


def write_idx(path, arr, gz=True):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_fake(d, n_train=50, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        write_idx(d / f"{split}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n,), dtype=np.uint8), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_generated_idx(tmp_path, gz):
    make_fake(tmp_path, gz=gz)
    ds = fashion_mnist(str(tmp_path), train=True)
    assert ds.images.shape == (50, 1, 28, 28) and ds.labels.shape == (50,)
    assert fashion_mnist(str(tmp_path), train=False).images.shape[0] == 20


def test_missing_dir_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist(str(tmp_path / "nope"))


def test_truncated_file_is_clear_error(tmp_path):
    make_fake(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        fashion_mnist(str(tmp_path))


def test_loader_is_deterministic_per_epoch_and_shards(tmp_path):
    make_fake(tmp_path)
    ds = fashion_mnist(str(tmp_path))
    a = [y for _, y in TensorLoader(ds, 10, train=True, seed=1)]
    b = [y for _, y in TensorLoader(ds, 10, train=True, seed=1)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    l2 = TensorLoader(ds, 10, train=True, seed=1)
    l2.set_epoch(1)
    assert not all(torch.equal(u, v) for u, (_, v) in zip(a, l2))
    r0 = torch.cat([y for _, y in TensorLoader(ds, 5, train=False, rank=0, world_size=2)])
    r1 = torch.cat([y for _, y in TensorLoader(ds, 5, train=False, rank=1, world_size=2)])
    torch.testing.assert_close(torch.cat([r0, r1]), ds.labels)


def test_crop_flip_is_a_shifted_copy():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    y = random_crop_flip(x, pad=0, flip=True, gen=g)
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(2))
    y = random_crop_flip(x, pad=2, flip=False, gen=g)
    assert y.shape == x.shape


def test_truncated_gz_and_bad_labels_are_clear_errors(tmp_path):
    make_fake(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz cannot be read .*truncated or damaged"):
        fashion_mnist(str(tmp_path))
    (tmp_path / "b").mkdir()
    make_fake(tmp_path / "b", gz=False)
    write_idx(tmp_path / "b" / "t10k-labels-idx1-ubyte", np.full(20, 12, dtype=np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"labels must lie in 0..9 .*found 12..12"):
        fashion_mnist(str(tmp_path / "b"), train=False)
