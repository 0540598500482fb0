"""Image files in class folders: ``root/<class>/*.jpg`` or ``root/{train,test|val}/<class>/``.

Without ``train/`` and ``test/`` (or ``val/``) trees, a seeded, stratified
``test_fraction`` of each class is the test split. Grayscale, palette, RGBA
(composited on black) and 16-bit images are converted to 8-bit RGB. The file
list comes from a cached index (:mod:`natkit.datasets.index`): files whose
header cannot be read are skipped with a warning and counted in ``skipped``;
a file that fails to decode later gives a blank image and a warning.
JPEGs are decoded at a reduced scale when they are at least twice the size
needed (:func:`~natkit.datasets.images.draft_for`), or on the GPU with
``decode='gpu'`` (:mod:`natkit.datasets.gpu_decode`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch

from natkit.datasets.base import stratified_split
from natkit.datasets.encoded import CACHE_LIMIT_BYTES, EncodedImages
from natkit.datasets.images import (
    UNREADABLE,
    ImageReadWarning,
    load_image,
    read_bytes,
    to_rgb_array,
)
from natkit.datasets.index import IMAGE_EXTENSIONS, folder_index
from natkit.errors import DataError
from natkit.values import MAX_IMAGE_SIZE, Bounds

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "ImageReadWarning", "create", "load_image",
           "to_rgb_array"]


def _split_roots(root: Path) -> tuple[Path, Path] | None:
    for test_name in ("test", "val"):
        if (root / "train").is_dir() and (root / test_name).is_dir():
            return root / "train", root / test_name
    return None


class ImageFolder(EncodedImages):
    """Images under class folders, loaded at ``image_size`` (held in memory when small)."""

    def __init__(self, root: Path, files: Sequence[str], labels: Sequence[int], classes: list[str],
                 image_size: int, cache: bool | None = None,
                 unreadable: dict[str, str] | None = None,
                 decode: Literal["cpu", "gpu"] = "cpu") -> None:
        self.root = root
        self.image_size = image_size
        self.channels = 3
        self.classes = classes
        self.decode = decode
        self.skipped: list[tuple[Path, str]] = []
        unreadable = unreadable or {}
        kept_files, kept_labels = [], []
        for rel, label in zip(files, labels, strict=True):
            if rel in unreadable:  # found when the index was built: nothing is opened here
                self._skip(root / rel, unreadable[rel])
                continue
            kept_files.append(rel)
            kept_labels.append(label)
        if cache is None:
            cache = len(kept_files) * 3 * image_size**2 <= CACHE_LIMIT_BYTES
        self.images: torch.Tensor | None = None
        if cache:
            decoded, kept = [], []
            for rel, label in zip(kept_files, kept_labels, strict=True):
                try:
                    decoded.append(load_image(root / rel, image_size))
                except UNREADABLE as exc:
                    self._skip(root / rel, f"{type(exc).__name__}: {exc}")
                    continue
                kept.append((rel, label))
            kept_files = [rel for rel, _ in kept]
            kept_labels = [label for _, label in kept]
            if decoded:
                self.images = torch.stack(decoded)
        if not kept_files:
            raise DataError(f"data.root: none of the {len(files)} images could be read "
                            f"(first: '{self.skipped[0][0]}': {self.skipped[0][1]})")
        # one numpy array, not a list of 1.28M Path objects: workers forked from this process
        # would touch (and so copy) every object's reference count, page by page
        self._paths = np.array([os.fsencode(rel) for rel in kept_files], dtype=np.bytes_)
        self.labels = torch.tensor(kept_labels, dtype=torch.int64)

    @property
    def files(self) -> list[Path]:
        """The images' paths, in index order."""
        return [self.path(i) for i in range(len(self))]

    def path(self, index: int) -> Path:
        """The path of image ``index``."""
        return self.root / os.fsdecode(self._paths[index])

    def _skip(self, path: Path, why: str) -> None:
        self.skipped.append((path, why))
        warnings.warn(f"skipping unreadable image '{path}': {why}", ImageReadWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self._paths)

    def _read(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8, decoded on the CPU."""
        if self.images is not None:
            return self.images[index]
        path = self.path(index)
        try:
            return load_image(path, self.image_size)
        except UNREADABLE as exc:
            # a file broken after the index was built: keep the batch going with a blank image
            self._skip(path, f"{type(exc).__name__}: {exc}")
            return torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8)

    def _encoded(self, index: int) -> torch.Tensor:
        return read_bytes(self.path(index))


def create(*, split: Literal["train", "test"] = "train", root: str = "data",
           image_size: Annotated[int, Bounds(ge=8, le=MAX_IMAGE_SIZE)] = 224,
           test_fraction: float = 0.2, seed: int = 0,
           cache: bool | None = None, decode: Literal["cpu", "gpu"] = "cpu",
           index_cache: bool = True) -> ImageFolder:
    """Images in class folders (ImageNet layout), with train/test trees or a held-out fraction.

    Args:
        root: folder holding <class>/<image> files, or train/ and test/ (or val/) trees of them.
        image_size: images are resized (shorter side) and centre-cropped to this square size.
        test_fraction: without train/test trees: stratified fraction held out as the test split.
        seed: seed of that held-out split.
        cache: decode every image into memory once (null: when they take at most 1 GiB).
        decode: where training batches read from disk are decoded: cpu (loader workers,
            JPEG draft mode) or gpu (nvJPEG in the main process; workers only read bytes).
        index_cache: keep the folder's file index in natkit's cache directory
            ($NATKIT_CACHE_DIR, else ~/.cache/natkit), reused while the folders are unchanged.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    if decode == "gpu":
        from natkit.datasets.gpu_decode import check_available

        check_available()
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data.root: '{root}' is not a directory (expected {root}/<class>/<image>)")
    trees = _split_roots(base)
    if trees is not None:
        train_index = folder_index(trees[0], use_cache=index_cache)
        names = [name for name, _ in train_index.classes]
        label_of = {name: i for i, name in enumerate(names)}
        chosen = train_index if split == "train" else folder_index(trees[1], use_cache=index_cache)
        extra = [name for name, _ in chosen.classes if name not in label_of]
        if extra:
            raise DataError(f"data.root: class folder '{trees[1] / extra[0]}' has no "
                            f"counterpart in '{trees[0]}'")
        files = [f for _, fs in chosen.classes for f in fs]
        labels = [label_of[name] for name, fs in chosen.classes for _ in fs]
    else:
        chosen = folder_index(base, use_cache=index_cache)
        names = [name for name, _ in chosen.classes]
        all_files = [f for _, fs in chosen.classes for f in fs]
        all_labels = [i for i, (_, fs) in enumerate(chosen.classes) for _ in fs]
        train_idx, test_idx = stratified_split(all_labels, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
        files = [all_files[i] for i in idx]
        labels = [all_labels[i] for i in idx]
    return ImageFolder(chosen.root, files, labels, names, image_size, cache,
                       unreadable=dict(chosen.skipped), decode=decode)
