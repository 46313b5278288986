"""ImageNet-style class folders: scanning, transforms, deterministic multi-worker batches,
clear errors, and a training run on generated images."""

import numpy as np
import pytest
import torch
from PIL import Image

from nuq.data import FolderLoader, image_folder, load_dataset, make_loader
from nuq.runs.config import config_from_dict
from nuq.train import train


def make_tree(root, n_train=12, n_val=4, sizes=((40, 30), (27, 50), (64, 64))):
    """Two classes told apart by colour (red / blue), random sizes and noise, PNG and JPEG."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(("n01_red", "n02_blue")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                img[..., 0 if c == 0 else 2] += 180
                Image.fromarray(img).save(d / f"img{i}.{'png' if i % 2 else 'jpeg'}")
    (root / "train" / "n01_red" / "notes.txt").write_text("not an image")
    return root


def test_scan_and_eval_transform(tmp_path):
    root = make_tree(tmp_path)
    ds = image_folder(str(root), train=False, image_size=32, resize=36)
    assert ds.classes == ["n01_red", "n02_blue"] and len(ds) == 8 and ds.num_classes == 2
    assert ds.labels.tolist() == [0] * 4 + [1] * 4
    x = ds.load(0)
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    # a square image already at the resize size: the centre crop is a plain slice
    Image.fromarray(np.arange(36 * 36 * 3, dtype=np.uint8).reshape(36, 36, 3)).save(tmp_path / "sq.png")
    ds.files[0] = str(tmp_path / "sq.png")
    ref = torch.from_numpy(np.array(Image.open(tmp_path / "sq.png"))).permute(2, 0, 1)[:, 2:34, 2:34]
    assert torch.equal(ds.load(0), ref)
    batch = ds.example_batch(3)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32


def test_batches_do_not_depend_on_workers_and_shards_are_disjoint(tmp_path):
    ds = image_folder(str(make_tree(tmp_path)), train=True, image_size=24, resize=28)
    a = FolderLoader(ds, 5, train=True, seed=3, workers=0)
    b = FolderLoader(ds, 5, train=True, seed=3, workers=2)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        xa, xb = list(a), list(b)
        assert len(xa) == len(a) == 4  # 24 images, drop_last
        for (x1, y1), (x2, y2) in zip(xa, xb):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    a.set_epoch(0)
    first = torch.cat([y for _, y in a])
    a.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in a]))  # reshuffled per epoch
    shards = [make_loader(ds, 4, train=True, seed=1, rank=r, world_size=2, workers=0) for r in (0, 1)]
    seen = [set(s._batches()[0]) | set(s._batches()[1]) for s in shards]
    assert not seen[0] & seen[1]


def test_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="needs data.data_dir"):
        load_dataset("imagenet", None)
    with pytest.raises(ValueError, match="does not exist"):
        image_folder(str(tmp_path / "nope"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder(str(tmp_path / "empty"))
    (tmp_path / "empty" / "train" / "a").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        image_folder(str(tmp_path / "empty"))
    root = make_tree(tmp_path / "t")
    (root / "val" / "n03_extra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "n03_extra" / "x.png")
    with pytest.raises(ValueError, match="different class folders"):
        image_folder(str(root), train=False)


def test_training_on_image_folders(tmp_path):
    root = make_tree(tmp_path / "data", n_train=16, n_val=6)
    raw = {"name": "f", "out_dir": str(tmp_path / "run"), "epochs": 3, "progress": False, "calib_batches": 1,
           "model": {"name": "resnet20", "kwargs": {"width": 4}},
           "data": {"name": "imagenet", "data_dir": str(root), "batch_size": 8, "eval_batch_size": 6, "workers": 0,
                    "image_size": 32},
           "optim": {"lr": 0.05}}
    assert image_folder(str(root), train=True).image_size == 224  # the default; data.image_size shrinks it
    final = train(config_from_dict(raw))
    assert final["test_top1"] >= 75  # red vs blue; chance is 50
    q = train(config_from_dict({**raw, "name": "q", "out_dir": str(tmp_path / "q"), "epochs": 1,
                                "init_from": str(tmp_path / "run"), "qat": {"w_bits": 4, "a_bits": 4}}))
    assert q["test_top1"] >= 75


def test_image_size_sets_the_crop_and_is_checked(tmp_path):
    root = make_tree(tmp_path)
    ds = load_dataset("imagenet", str(root), train=False, image_size=40)
    assert (ds.image_size, ds.resize) == (40, 46) and ds.load(0).shape == (3, 40, 40)
    assert load_dataset("imagenet", str(root), train=True, image_size=40).load(0).shape == (3, 40, 40)
    with pytest.raises(ValueError, match="data.image_size=32: dataset 'fashion_mnist' has a fixed image size"):
        load_dataset("fashion_mnist", None, train=False, image_size=32)
    for bad in (4, "64", True):
        with pytest.raises(ValueError, match="data.image_size="):
            config_from_dict({"data": {"image_size": bad}})


def test_truncated_jpeg_and_empty_class_are_named(tmp_path):
    root = make_tree(tmp_path / "t")
    bad = root / "val" / "n01_red" / "img0.jpeg"
    bad.write_bytes(bad.read_bytes()[:200])
    ds = image_folder(str(root), train=False)
    with pytest.raises(ValueError, match=r"cannot decode image .*n01_red/img0.jpeg"):
        for i in range(len(ds)):
            ds.load(i)
    (root / "train" / "n03_none").mkdir()
    (root / "val" / "n03_none").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) n03_none hold no images"):
        image_folder(str(root), train=True)
