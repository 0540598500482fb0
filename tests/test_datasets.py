"""Every dataset on small data the tests make: items, splits, labels and clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import natkit
from natkit.datasets import stratified_split
from natkit.datasets.imagefolder import ImageReadWarning
from natkit.datasets.shapes import CLASSES
from natkit.errors import DataError


def test_items_are_image_index_label(host):
    ds = natkit.create_dataset("shapes", split="train", num_train=20, image_size=24)
    image, index, label = ds[7]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert index == 7 and label == 7 % 10
    torch.testing.assert_close(ds.get_batch(torch.tensor([7, 3]))[0], image)


def test_shapes_are_deterministic_balanced_and_splits_differ(host):
    a = natkit.create_dataset("shapes", split="train", num_train=50, image_size=16, seed=1)
    b = natkit.create_dataset("shapes", split="train", num_train=50, image_size=16, seed=1)
    test = natkit.create_dataset("shapes", split="test", num_test=50, image_size=16, seed=1)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, test.images)
    assert torch.bincount(a.labels).tolist() == [5] * 10
    assert a.classes == list(CLASSES)
    # a larger set is the smaller one extended: image i depends only on (seed, split, i)
    big = natkit.create_dataset("shapes", split="train", num_train=60, image_size=16, seed=1)
    assert torch.equal(big.images[:50], a.images)


def test_shape_colour_carries_no_class_information(host):
    ds = natkit.create_dataset("shapes", split="train", num_train=2000, image_size=16)
    mean_colour = ds.images.float().mean(dim=(2, 3)) / 255  # [n, 3]
    per_class = torch.stack([mean_colour[ds.labels == c].mean(0) for c in range(10)])
    assert float(per_class.std(0).max()) < 0.03  # same average colour in every class


def test_textured_background_variant(host):
    flat = natkit.create_dataset("shapes", split="train", num_train=10, image_size=32)
    tex = natkit.create_dataset("shapes", split="train", num_train=10, image_size=32,
                                background="texture")
    corner = (slice(None), slice(None), slice(0, 4), slice(0, 4))  # mostly background
    assert tex.images[corner].float().std((2, 3)).mean() > 2 * flat.images[corner].float().std(
        (2, 3)).mean()


def test_digits_are_sklearns_resized_and_split(host):
    train = natkit.create_dataset("digits", split="train", image_size=32)
    test = natkit.create_dataset("digits", split="test", image_size=32)
    assert len(train) + len(test) == 1797
    assert train.channels == 1 and train[0][0].shape == (1, 32, 32)
    assert len(test) == pytest.approx(0.25 * 1797, abs=10)
    assert set(torch.unique(test.labels).tolist()) == set(range(10))


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.repeat(np.arange(5), [10, 3, 2, 50, 7])
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    assert set(labels[kept]) == set(labels[held]) == set(range(5))
    again, _ = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(kept, again)


# ---------------------------------------------------------------- image folders


def write_image(path, mode="RGB", size=(20, 12), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value, dtype=np.uint16)).save(path)
    else:
        Image.new(mode, size, value if mode in ("L", "I;16") else (value,) * len(mode)).save(path)


def make_tree(root, classes=("cat", "dog"), per_class=5):
    for c in classes:
        for i in range(per_class):
            write_image(root / c / f"{i}.png", value=40 * (classes.index(c) + 1))
    return root


def test_imagefolder_holds_out_a_stratified_fraction(host, tmp_path):
    root = make_tree(tmp_path / "flat", per_class=10)
    train = natkit.create_dataset("imagefolder", split="train", root=str(root), image_size=8)
    test = natkit.create_dataset("imagefolder", split="test", root=str(root), image_size=8)
    assert (len(train), len(test)) == (16, 4)
    assert train.classes == ["cat", "dog"]
    assert set(map(str, train.files)).isdisjoint(map(str, test.files))
    image, _, label = test[0]
    assert image.shape == (3, 8, 8)
    assert float(image.mean()) == pytest.approx(40 * (label + 1) / 255, abs=0.01)


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_imagefolder_uses_train_and_test_trees(host, tmp_path, test_dir):
    make_tree(tmp_path / "train", per_class=3)
    make_tree(tmp_path / test_dir, per_class=2)
    train = natkit.create_dataset("imagefolder", split="train", root=str(tmp_path), image_size=8)
    test = natkit.create_dataset("imagefolder", split="test", root=str(tmp_path), image_size=8)
    assert (len(train), len(test)) == (6, 4)
    assert test.labels.tolist() == [0, 0, 1, 1]


def test_imagefolder_converts_odd_formats_and_skips_broken_files(host, tmp_path):
    root = tmp_path / "odd" / "train"
    make_tree(tmp_path / "odd" / "test", classes=("a", "b"), per_class=1)
    write_image(root / "a" / "gray.png", mode="L", value=200)
    write_image(root / "a" / "rgba.png", mode="RGBA", value=255)
    write_image(root / "a" / "deep.png", mode="I;16", value=65535)
    write_image(root / "b" / "ok.jpg")
    (root / "b" / "corrupt.png").write_bytes(b"not an image at all")
    good = root / "b" / "good.png"
    write_image(good)
    (root / "b" / "truncated.png").write_bytes(good.read_bytes()[:60])
    with pytest.warns(ImageReadWarning, match="skipping unreadable image"):
        ds = natkit.create_dataset("imagefolder", split="train", root=str(root.parent),
                                   image_size=8)
    assert len(ds.skipped) == 2
    assert {p.name for p, _ in ds.skipped} == {"corrupt.png", "truncated.png"}
    by_name = {p.name: ds.load(i) for i, p in enumerate(ds.files)}
    assert float(by_name["gray.png"].mean()) == pytest.approx(200 / 255, abs=0.01)
    assert float(by_name["deep.png"].mean()) == pytest.approx(1.0, abs=0.01)  # 16-bit white
    assert by_name["rgba.png"].shape == (3, 8, 8)


def test_imagefolder_errors_name_the_folder(host, tmp_path):
    with pytest.raises(DataError, match="'.*missing' is not a directory"):
        natkit.create_dataset("imagefolder", split="train", root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no class folders"):
        natkit.create_dataset("imagefolder", split="train", root=str(tmp_path / "empty"))
    make_tree(tmp_path / "partial")
    (tmp_path / "partial" / "bird").mkdir()
    with pytest.raises(DataError, match="class folder '.*bird' holds no images"):
        natkit.create_dataset("imagefolder", split="train", root=str(tmp_path / "partial"))


def test_imagefolder_lazy_loading_matches_the_cache(host, tmp_path):
    root = make_tree(tmp_path / "t", per_class=4)
    cached = natkit.create_dataset("imagefolder", split="train", root=str(root), image_size=8)
    lazy = natkit.create_dataset("imagefolder", split="train", root=str(root), image_size=8,
                                 cache=False)
    assert lazy.images is None
    idx = torch.arange(len(lazy))
    torch.testing.assert_close(lazy.get_batch(idx), cached.get_batch(idx))


# ---------------------------------------------------------------- torchvision sets


@pytest.fixture
def trust_files(monkeypatch):
    """torchvision checks md5 sums of the real archives; the fakes made here cannot match.

    (That check is also what keeps torchvision from unpickling a tampered CIFAR file.)
    """
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(stl10, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_reads_the_python_batches(host, tmp_path, trust_files):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                         "labels": [0, 1, 2, 3]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    train = natkit.create_dataset("cifar10", split="train", root=str(tmp_path))
    test = natkit.create_dataset("cifar10", split="test", root=str(tmp_path), image_size=16)
    assert len(train) == 20 and len(test) == 4
    assert train[0][0].shape == (3, 32, 32) and test[0][0].shape == (3, 16, 16)
    assert train.classes[3] == "c3" and test.labels.tolist() == [0, 1, 2, 3]


def test_stl10_reads_the_binaries_and_the_unlabeled_split(host, tmp_path, trust_files):
    base = tmp_path / "stl10_binary"
    base.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        rng.integers(0, 255, n * 3 * 96 * 96, dtype=np.uint8).tofile(base / f"{split}_X.bin")
        if split != "unlabeled":
            np.arange(1, n + 1, dtype=np.uint8).tofile(base / f"{split}_y.bin")
    both = natkit.create_dataset("stl10", split="train+unlabeled", root=str(tmp_path),
                                 image_size=32)
    assert len(both) == 7 and both[0][0].shape == (3, 32, 32)
    assert both.labels.tolist() == [0, 1, 2, -1, -1, -1, -1]
    assert len(natkit.create_dataset("stl10", split="test", root=str(tmp_path))) == 2


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"),
                                          ("stl10", "stl10_binary")])
def test_missing_torchvision_files_say_where_they_are_expected(host, tmp_path, name, folder):
    with pytest.raises(DataError, match=f"no .* found under .*expected .*{folder}"):
        natkit.create_dataset(name, split="train", root=str(tmp_path))
