"""natkit.wrap_dataset: any map-style dataset of (image, label) in natkit's form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from natkit.datasets import imagefolder, wrap_dataset
from natkit.errors import DataError


def _photos(root: Path, per_class: int = 3) -> None:
    """Two class folders of RGB PNGs of different shapes (landscape, portrait, square)."""
    rng = np.random.default_rng(0)
    shapes = [(20, 30), (30, 20), (24, 24)]
    for label, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = shapes[i % 3]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., 0] = 40 + 150 * label  # the classes differ in red
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_torchvision_image_folder_gives_natkit_image_folder_pixels(tmp_path: Path) -> None:
    _photos(tmp_path / "photos" / "train")
    (tmp_path / "photos" / "test").mkdir()
    _photos(tmp_path / "photos" / "test")
    source = torchvision.datasets.ImageFolder(tmp_path / "photos" / "train")
    wrapped = wrap_dataset(source, image_size=16)
    ours = imagefolder.create(split="train", root=str(tmp_path / "photos"), image_size=16,
                              index_cache=False)
    assert (wrapped.channels, wrapped.image_size, len(wrapped)) == (3, 16, 6)
    assert wrapped.classes == ["cat", "dog"] == ours.classes
    by_path = {path.resolve(): i for i, path in enumerate(ours.files)}
    for i, (path, label) in enumerate(source.samples):
        j = by_path[Path(path).resolve()]
        assert torch.equal(wrapped.raw_item(i), ours.raw_item(j))
        image, index, got = wrapped[i]
        assert (index, got) == (i, label) and label == int(ours.labels[j])
        assert image.dtype == torch.float32 and torch.equal(image, ours.load(j))


def test_lazy_and_cached_wrappings_agree(tmp_path: Path) -> None:
    _photos(tmp_path)
    source = torchvision.datasets.ImageFolder(tmp_path)
    cached = wrap_dataset(source, image_size=12, cache=True)
    lazy = wrap_dataset(source, image_size=12, cache=False)
    assert cached.images is not None and lazy.images is None
    assert torch.equal(lazy.labels, torch.tensor(source.targets))
    indices = torch.tensor([5, 0, 3])
    assert torch.equal(lazy.raw_batch(indices), cached.raw_batch(indices))
    assert torch.equal(lazy.get_batch(indices), cached.get_batch(indices))


def test_float_tensors_from_to_tensor_equal_the_pil_images(tmp_path: Path) -> None:
    _photos(tmp_path)
    plain = torchvision.datasets.ImageFolder(tmp_path)
    tensors = torchvision.datasets.ImageFolder(
        tmp_path, transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    # square images at their own size: no resizing, so float -> uint8 must be exact
    a = wrap_dataset(plain, image_size=24)
    b = wrap_dataset(tensors, image_size=24)
    square = [i for i, (path, _) in enumerate(plain.samples) if Image.open(path).size == (24, 24)]
    assert square
    for i in square:
        assert torch.equal(a.raw_item(i), b.raw_item(i))


def test_normalised_images_are_refused_with_the_item_named(tmp_path: Path) -> None:
    _photos(tmp_path)
    normalised = torchvision.datasets.ImageFolder(
        tmp_path, transform=v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                        v2.Normalize([0.5] * 3, [0.1] * 3)]))
    with pytest.raises(DataError, match=r"dataset\[0\]: a float image must hold values in "
                                        r"\[0, 1\].*no Normalize"):
        wrap_dataset(normalised)


def test_dict_items_as_a_hugging_face_split_gives_them() -> None:
    rng = np.random.default_rng(1)
    rows = [{"img": Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), mode="L"),
             "fine_label": i % 3} for i in range(7)]
    wrapped = wrap_dataset(rows, image_key="img", label_key="fine_label", classes=["a", "b", "c"])
    assert (wrapped.channels, wrapped.image_size) == (1, 10)  # grayscale kept, size inferred
    assert wrapped.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert torch.equal(wrapped.raw_item(4)[0], torch.from_numpy(np.array(rows[4]["img"])))
    with pytest.raises(DataError, match=r"dataset\[0\]: no image_key 'image'.*img, fine_label"):
        wrap_dataset(rows)


def test_channels_are_converted_to_the_requested_count() -> None:
    gray = torch.full((1, 8, 8), 100, dtype=torch.uint8)
    rgb = torch.zeros(3, 8, 8, dtype=torch.uint8)
    rgb[0] = 255
    wrapped = wrap_dataset([(gray, 0), (rgb, 1)], channels=3)
    assert torch.equal(wrapped.raw_item(0), torch.full((3, 8, 8), 100, dtype=torch.uint8))
    as_gray = wrap_dataset([(rgb, 1)], channels=1)
    # the channel mean, as the preprocessors and an exported encoder see RGB images
    assert as_gray.raw_item(0).unique().tolist() == [85]


def test_arrays_channels_last_alpha_and_unlabelled_images() -> None:
    rgba = np.zeros((6, 6, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    rgba[..., 3] = 128
    wrapped = wrap_dataset([rgba, rgba])  # images alone: unlabelled
    assert wrapped.labels.tolist() == [-1, -1] and wrapped.classes == []
    pixel = wrapped.raw_item(0)[:, 0, 0].tolist()
    assert pixel == [0, round(200 * 128 / 255), 0]  # alpha composited on black


@pytest.mark.parametrize(("items", "message"), [
    (5, r"dataset: expected a map-style dataset .* got int"),
    ([], r"dataset: it holds no items"),
    ([("not an image", 0)], r"dataset\[0\]: expected an image .* got str"),
    ([(torch.zeros(5, 8, 8, 7), 0)], r"dataset\[0\]: expected an image laid out .* shape \(5, 8, 8, 7\)"),
    ([(torch.zeros(3, 8, 8), "cat")], r"dataset\[0\]: expected an integer label, got str 'cat'"),
    ([(torch.zeros(3, 8, 8, dtype=torch.int32), 0)], r"dataset\[0\]: expected uint8 or float"),
])
def test_bad_datasets_get_one_line_naming_the_item(items: object, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        wrap_dataset(items)
    assert "\n" not in str(info.value)


def test_bad_options_are_named() -> None:
    items = [(torch.zeros(3, 8, 8), 0)]
    with pytest.raises(DataError, match=r"channels: expected 1 or 3, got 2"):
        wrap_dataset(items, channels=2)
    with pytest.raises(DataError, match=r"image_size: expected an integer in \[1, 4096\], got 0"):
        wrap_dataset(items, image_size=0)


def test_a_wrapped_dataset_trains_and_evaluates_as_a_registered_dataset(
        tmp_path: Path, natkit_host: object) -> None:
    from rich.console import Console

    from natkit import config, hookimpl, lifecycle
    from natkit.testing import TINY

    for split in ("train", "test"):
        _photos(tmp_path / "photos" / split, per_class=12)

    class Photos:
        @hookimpl
        def register_datasets(self, register: object) -> None:
            def create(*, split: str = "train", image_size: int = 16) -> object:
                folder = torchvision.datasets.ImageFolder(tmp_path / "photos" / split)
                return wrap_dataset(folder, image_size=image_size)

            register("photos", create)

    natkit_host.register(Photos(), "photos")
    overrides = [o for o in TINY if not o.startswith("data.num_")]
    run = lifecycle.start(config.build(overrides=[*overrides, "data.name=photos"]),
                          tmp_path / "run", console=Console(stderr=True, quiet=True))
    outcome = lifecycle.execute(run, evaluate=True, console=Console(stderr=True, quiet=True))
    assert run.epoch == 2 and len(run.dataset) == 24
    # the probes ran on the wrapped test split's labels (two classes: chance is 0.5)
    assert set(outcome.results) == {"linear", "mlp", "knn"}
    assert outcome.results["knn"]["trained"] > 0.5


def test_labels_are_the_items_even_where_a_target_transform_changes_the_column(tmp_path):
    _photos(tmp_path)
    flipped = torchvision.datasets.ImageFolder(tmp_path, target_transform=lambda t: 1 - t)
    for cache in (True, False):
        wrapped = wrap_dataset(flipped, image_size=8, cache=cache)
        assert wrapped.labels.tolist() == [flipped[i][1] for i in range(len(flipped))]


def test_the_cache_is_filled_one_source_image_at_a_time():
    import gc
    import weakref

    alive, most = 0, 0

    def gone() -> None:
        nonlocal alive
        alive -= 1

    class Photos:
        """Large source images, as a folder of camera photographs gives; counts those alive."""

        def __len__(self) -> int:
            return 40

        def __getitem__(self, i: int) -> tuple[Image.Image, int]:
            nonlocal alive, most
            image = Image.new("RGB", (400, 300), (i, 0, 0))
            weakref.finalize(image, gone)
            alive += 1
            most = max(most, alive)
            return image, i % 2

    wrapped = wrap_dataset(Photos(), image_size=16)
    gc.collect()
    assert wrapped.images is not None and wrapped.raw_item(39)[0, 0, 0] == 39
    assert most <= 2  # never the whole dataset's full-size images at once


def test_a_bool_image_size_is_refused():
    with pytest.raises(DataError, match="image_size: expected an integer"):
        wrap_dataset([(torch.zeros(3, 8, 8), 0)], image_size=True)
