"""CIFAR-10/100 readers on tiny pickles of the standard format made on the fly."""

import pickle

import numpy as np
import pytest

from nuq.data import load_dataset


def write_batch(path, n, label_key, classes, seed):
    rng = np.random.default_rng(seed)
    obj = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
           label_key.encode(): [int(v) for v in rng.integers(0, classes, n)], b"batch_label": b"x"}
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return obj


def test_cifar10(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    first = write_batch(d / "data_batch_1", 7, "labels", 10, 0)
    for i in range(2, 6):
        write_batch(d / f"data_batch_{i}", 7, "labels", 10, i)
    write_batch(d / "test_batch", 5, "labels", 10, 9)
    tr = load_dataset("cifar10", str(tmp_path), train=True)
    assert tr.images.shape == (35, 3, 32, 32) and tr.num_classes == 10
    # channel-major layout: the first 1024 bytes are the red plane
    np.testing.assert_array_equal(tr.images[0, 0].numpy().reshape(-1), first[b"data"][0, :1024])
    assert load_dataset("cifar10", str(tmp_path), train=False).images.shape[0] == 5


def test_cifar100(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    write_batch(d / "train", 6, "fine_labels", 100, 0)
    write_batch(d / "test", 4, "fine_labels", 100, 1)
    ds = load_dataset("cifar100", str(tmp_path), train=False)
    assert ds.images.shape == (4, 3, 32, 32) and ds.num_classes == 100


def test_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked in"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        load_dataset("cifar100", str(tmp_path))
    (d / "train").write_bytes(pickle.dumps(print))
    with pytest.raises(ValueError, match="refusing"):
        load_dataset("cifar100", str(tmp_path))
