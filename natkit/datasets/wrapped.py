"""Any map-style dataset of ``(image, label)`` in natkit's form: :func:`wrap_dataset`.

torchvision's datasets (``CIFAR10(root)``, ``ImageFolder(root)``, ...), a Hugging
Face ``datasets`` split (items are dicts: ``{"image": PIL image, "label": 3}``) or
a list of pairs all work. An item's image may be a PIL image, a uint8 tensor or
array, or a float tensor with values in [0, 1] (``ToTensor()``'s output), laid out
``[c, h, w]``, ``[h, w, c]`` or ``[h, w]``. Every image becomes uint8 of one size
and channel count, its shorter side resized and centre-cropped as natkit's
image folders are; a whole dataset under 1 GiB of pixels is decoded once and
held in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from natkit.datasets.base import UNLABELED, ImageDataset, resize_square
from natkit.datasets.images import centre_square, to_rgb_array, upright
from natkit.errors import DataError
from natkit.values import MAX_IMAGE_SIZE

_CACHE_LIMIT_BYTES = 1 << 30
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def wrap_dataset(dataset: Any, *, image_size: int | None = None, channels: int | None = None,
                 classes: Sequence[str] | None = None, image_key: str = "image",
                 label_key: str = "label", cache: bool | None = None) -> WrappedDataset:
    """natkit's ``(image, index, label)`` form of a map-style dataset of ``(image, label)`` items.

    Args:
        dataset: anything with ``len()`` and ``dataset[i]``; an item is ``(image, label)``,
            a mapping holding ``image_key`` (and ``label_key``), or an image alone (unlabelled).
        image_size: side of the square images; the first image's shorter side when None.
        channels: 1 (grayscale) or 3 (RGB); the first image's when None.
        classes: class names; else the dataset's ``classes`` (torchvision), its label
            feature's names (Hugging Face), or the labels' numbers.
        cache: decode every image once and keep them (default: when they fit in 1 GiB).
    """
    return WrappedDataset(dataset, image_size=image_size, channels=channels, classes=classes,
                          image_key=image_key, label_key=label_key, cache=cache)


class WrappedDataset(ImageDataset):
    """A map-style dataset of ``(image, label)`` seen as a natkit dataset (see :func:`wrap_dataset`)."""

    def __init__(self, source: Any, *, image_size: int | None, channels: int | None,
                 classes: Sequence[str] | None, image_key: str, label_key: str,
                 cache: bool | None) -> None:
        try:
            count = len(source)
        except TypeError:
            raise DataError(f"dataset: expected a map-style dataset (with len() and dataset[i]), "
                            f"got {type(source).__name__}") from None
        if count == 0:
            raise DataError("dataset: it holds no items")
        self.source, self.image_key, self.label_key = source, image_key, label_key
        first_image, first_label = self._item(0)
        first = _as_tensor(first_image, 0)
        if channels not in (None, 1, 3):
            raise DataError(f"channels: expected 1 or 3, got {channels!r}")
        self.channels = channels or (1 if first.shape[0] == 1 else 3)
        size = image_size if image_size is not None else int(min(first.shape[-2:]))
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
            raise DataError(f"image_size: expected an integer in [1, {MAX_IMAGE_SIZE}], got {size!r}")
        self.image_size = size
        if cache is None:
            cache = count * self.channels * size**2 <= _CACHE_LIMIT_BYTES
        self.images: torch.Tensor | None = None
        if cache:
            # one source image at a time: a folder of camera photos is gigabytes before resizing
            self.images = torch.empty(count, self.channels, size, size, dtype=torch.uint8)
            self.images[0] = self._convert(first_image, 0)
            del first_image  # a full-size source image: not kept while the others decode
            labels = [first_label]
            for i in range(1, count):
                image, label = self._item(i)
                self.images[i] = self._convert(image, i)
                labels.append(label)
        else:
            labels = self._labels(count, first_label)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.classes = list(classes) if classes is not None else self._classes()

    def _item(self, index: int) -> tuple[Any, int]:
        """The image and label (UNLABELED when there is none) of the source's item ``index``."""
        item = self.source[index]
        if isinstance(item, Mapping):
            if self.image_key not in item:
                raise DataError(f"dataset[{index}]: no image_key {self.image_key!r} in the item "
                                f"(its keys: {', '.join(map(str, item))})")
            return item[self.image_key], _label(item.get(self.label_key), index)
        if isinstance(item, (tuple, list)):
            if not item:
                raise DataError(f"dataset[{index}]: an empty item; expected (image, label)")
            return item[0], _label(item[1] if len(item) > 1 else None, index)
        return item, UNLABELED

    def _labels(self, count: int, first: int) -> list[int]:
        """Every item's label, read from a labels column when the source has one (no decoding)."""
        if getattr(self.source, "target_transform", None) is not None:
            # the column holds the labels before the transform the items apply
            return [first] + [self._item(i)[1] for i in range(1, count)]
        for column in (getattr(self.source, "targets", None), getattr(self.source, "labels", None)):
            if column is not None and len(column) == count:
                return [int(label) for label in column]
        if hasattr(self.source, "column_names") and self.label_key in self.source.column_names:
            return [_label(label, i) for i, label in enumerate(self.source[self.label_key])]
        if hasattr(self.source, "column_names"):  # a Hugging Face split without labels
            return [UNLABELED] * count
        return [first] + [self._item(i)[1] for i in range(1, count)]

    def _classes(self) -> list[str]:
        names = getattr(self.source, "classes", None)
        if names is None and hasattr(self.source, "features"):
            names = getattr(self.source.features.get(self.label_key), "names", None)
        if names is not None:
            return [str(name) for name in names]
        top = int(self.labels.max())
        return [str(i) for i in range(top + 1)]

    def _convert(self, image: Any, index: int) -> torch.Tensor:
        """One of the source's images as uint8 ``[channels, image_size, image_size]``."""
        pixels = _as_tensor(image, index, self.image_size)
        if pixels.shape[0] != self.channels:
            if self.channels == 3:
                pixels = pixels.expand(3, -1, -1)
            else:  # the channel mean, as natkit's preprocessors and exported encoders convert
                pixels = pixels.float().mean(0, keepdim=True).round_().to(torch.uint8)
        return pixels.contiguous()

    def __len__(self) -> int:
        return len(self.labels)

    def raw_item(self, index: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[index]
        return self._convert(self._item(index)[0], index)

    def load(self, index: int) -> torch.Tensor:
        return self.raw_item(index).float().div_(255.0)

    def raw_batch(self, indices: torch.Tensor) -> torch.Tensor:
        if self.images is not None:
            return self.images[indices]
        return torch.stack([self.raw_item(int(i)) for i in indices])

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.raw_batch(indices).float().div_(255.0)


def _label(value: Any, index: int) -> int:
    if value is None:
        return UNLABELED
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"dataset[{index}]: expected an integer label, got "
                        f"{type(value).__name__} {value!r:.40}") from None


def _as_tensor(image: Any, index: int, size: int | None = None) -> torch.Tensor:
    """An image as uint8 ``[1 or 3, h, w]``; the centre square resized to ``size`` when given."""
    if isinstance(image, Image.Image):
        image = upright(image)
        gray = image.mode in _GRAY_MODES
        if size is not None:
            base = image if image.mode in ("RGB", "L") else Image.fromarray(to_rgb_array(image))
            image = centre_square(base, size)
        array = np.asarray(image.convert("L") if gray else image.convert("RGB"), dtype=np.uint8)
        array = array[..., None] if gray else array
        return torch.from_numpy(np.array(array.transpose(2, 0, 1), order="C"))  # writable
    if isinstance(image, np.ndarray):  # a copy: torch refuses to share a read-only array
        image = torch.from_numpy(np.array(image, order="C"))
    if not isinstance(image, torch.Tensor):
        raise DataError(f"dataset[{index}]: expected an image (PIL image, tensor or array), got "
                        f"{type(image).__name__}")
    pixels = _channels_first(image, index)
    if pixels.is_floating_point():
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise DataError(f"dataset[{index}]: a float image must hold values in [0, 1], got "
                            f"[{low:.3g}, {high:.3g}]; give natkit unnormalised images (no "
                            "Normalize transform): it normalises them itself")
        pixels = pixels.mul(255.0).round_().to(torch.uint8)
    elif pixels.dtype != torch.uint8:
        raise DataError(f"dataset[{index}]: expected uint8 or float pixels, got {pixels.dtype}")
    if pixels.shape[0] in (2, 4):  # an alpha channel: composited on black, as image files are
        alpha = pixels[-1:].float() / 255.0
        pixels = (pixels[:-1].float() * alpha).round_().to(torch.uint8)
    if size is None:
        return pixels
    h, w = pixels.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize_square(pixels[None, :, top:top + side, left:left + side], size)[0]


def _channels_first(image: torch.Tensor, index: int) -> torch.Tensor:
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3 and image.shape[0] in (1, 2, 3, 4):
        return image
    if image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
        return image.permute(2, 0, 1)
    raise DataError(f"dataset[{index}]: expected an image laid out [c, h, w], [h, w, c] or [h, w] "
                    f"with 1 to 4 channels, got shape {tuple(image.shape)}")
