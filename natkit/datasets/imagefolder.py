"""Image files in class folders: ``root/<class>/*.jpg`` or ``root/{train,test|val}/<class>/``.

Without ``train/`` and ``test/`` (or ``val/``) trees, a seeded, stratified
``test_fraction`` of each class is the test split. Grayscale, palette, RGBA
(composited on black) and 16-bit images are converted to 8-bit RGB; files
that cannot be read are skipped with a warning and counted in ``skipped``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from natkit.datasets.base import ImageDataset, stratified_split
from natkit.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff",
                              ".webp"})
_CACHE_LIMIT_BYTES = 1 << 30  # decode everything up front below 1 GiB of pixels
# a header claiming more pixels than PIL's limit is refused, not decoded (a decompression bomb)
_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
               Image.DecompressionBombWarning)


class ImageReadWarning(UserWarning):
    """An image file could not be read and was skipped."""


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image as uint8 RGB ``[h, w, 3]`` (16-bit and float images rescaled, alpha on black)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0.0) <= 1.0 else values.max()
        else:
            top = 65535.0 if values.max(initial=0.0) > 255 else 255.0
        gray = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return rgb.round().astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """Turn PIL's warning about an image over its pixel limit into an error: never decode one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def load_image(path: Path, size: int) -> torch.Tensor:
    """Read ``path``, resize its shorter side to ``size`` and centre-crop: uint8 ``[3, size, size]``."""
    with _bombs_refused(), Image.open(path) as image:
        image.load()
        rgb = Image.fromarray(to_rgb_array(image))
    w, h = rgb.size
    scale = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BILINEAR)
    left, top = (rgb.size[0] - size) // 2, (rgb.size[1] - size) // 2
    rgb = rgb.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _scan_classes(root: Path) -> list[tuple[str, list[Path]]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.root: '{root}' holds no class folders (expected {root}/<class>/<image>)")
    found = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"data.root: class folder '{folder}' holds no images "
                            f"(expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})")
        found.append((folder.name, files))
    return found


def _split_roots(root: Path) -> tuple[Path, Path] | None:
    for test_name in ("test", "val"):
        if (root / "train").is_dir() and (root / test_name).is_dir():
            return root / "train", root / test_name
    return None


class ImageFolder(ImageDataset):
    """Images under class folders, loaded at ``image_size`` (held in memory when small)."""

    def __init__(self, files: list[Path], labels: list[int], classes: list[str], image_size: int,
                 cache: bool | None = None) -> None:
        self.image_size = image_size
        self.channels = 3
        self.classes = classes
        self.skipped: list[tuple[Path, str]] = []
        kept_files, kept_labels = [], []
        for path, label in zip(files, labels, strict=True):
            try:
                with _bombs_refused(), Image.open(path) as image:  # reads the header only: cheap
                    image.size  # noqa: B018
            except _UNREADABLE as exc:
                self._skip(path, exc)
                continue
            kept_files.append(path)
            kept_labels.append(label)
        if cache is None:
            cache = len(kept_files) * 3 * image_size**2 <= _CACHE_LIMIT_BYTES
        self.images: torch.Tensor | None = None
        if cache:
            decoded, kept = [], []
            for path, label in zip(kept_files, kept_labels, strict=True):
                try:
                    decoded.append(load_image(path, image_size))
                except _UNREADABLE as exc:
                    self._skip(path, exc)
                    continue
                kept.append((path, label))
            kept_files = [p for p, _ in kept]
            kept_labels = [label for _, label in kept]
            if decoded:
                self.images = torch.stack(decoded)
        if not kept_files:
            raise DataError(f"data.root: none of the {len(files)} images could be read "
                            f"(first: '{self.skipped[0][0]}': {self.skipped[0][1]})")
        self.files = kept_files
        self.labels = torch.tensor(kept_labels, dtype=torch.int64)

    def _skip(self, path: Path, exc: BaseException) -> None:
        self.skipped.append((path, f"{type(exc).__name__}: {exc}"))
        warnings.warn(f"skipping unreadable image '{path}': {exc}", ImageReadWarning, stacklevel=3)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[index].float().div_(255.0)
        try:
            return load_image(self.files[index], self.image_size).float().div_(255.0)
        except _UNREADABLE as exc:
            # a file broken after the scan: keep the batch going with a blank image
            self._skip(self.files[index], exc)
            return torch.zeros(3, self.image_size, self.image_size)

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        if self.images is not None:
            return self.images[indices].float().div_(255.0)
        return super().get_batch(indices)


def create(*, split: Literal["train", "test"] = "train", root: str = "data",
           image_size: int = 224, test_fraction: float = 0.2, seed: int = 0,
           cache: bool | None = None) -> ImageFolder:
    """Images in class folders (ImageNet layout), with train/test trees or a held-out fraction.

    Args:
        root: folder holding <class>/<image> files, or train/ and test/ (or val/) trees of them.
        image_size: images are resized (shorter side) and centre-cropped to this square size.
        test_fraction: without train/test trees: stratified fraction held out as the test split.
        seed: seed of that held-out split.
        cache: decode every image into memory once (null: when they take at most 1 GiB).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data.root: '{root}' is not a directory (expected {root}/<class>/<image>)")
    trees = _split_roots(base)
    if trees is not None:
        train_classes = _scan_classes(trees[0])
        names = [name for name, _ in train_classes]
        if split == "train":
            chosen = train_classes
        else:
            chosen = _scan_classes(trees[1])
            extra = [name for name, _ in chosen if name not in names]
            if extra:
                raise DataError(f"data.root: class folder '{trees[1] / extra[0]}' has no "
                                f"counterpart in '{trees[0]}'")
        files = [f for _, fs in chosen for f in fs]
        labels = [names.index(name) for name, fs in chosen for _ in fs]
    else:
        found = _scan_classes(base)
        names = [name for name, _ in found]
        all_files = [f for _, fs in found for f in fs]
        all_labels = [i for i, (_, fs) in enumerate(found) for _ in fs]
        train_idx, test_idx = stratified_split(all_labels, test_fraction, seed)
        idx = train_idx if split == "train" else test_idx
        files = [all_files[i] for i in idx]
        labels = [all_labels[i] for i in idx]
    return ImageFolder(files, labels, names, image_size, cache)
