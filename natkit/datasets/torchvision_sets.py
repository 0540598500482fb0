"""CIFAR-10 and STL-10 through torchvision, from files already on disk (never downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from natkit.datasets.base import UNLABELED, TensorImageDataset, resize_square
from natkit.errors import DataError

STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def _open(cls: type, root: str, name: str, expected: str, source: str, **kwargs: object) -> object:
    if not Path(root).is_dir():
        raise DataError(f"data.root: '{root}' is not a directory (expected {name} in {expected})")
    try:
        return cls(root, download=False, **kwargs)
    except RuntimeError as exc:
        raise DataError(
            f"data.root: no {name} found under '{root}' (expected {expected}; "
            f"fetch it from {source} on a machine with internet)"
        ) from exc


def create_cifar10(*, split: Literal["train", "test"] = "train", root: str = "data",
                   image_size: int = 32) -> TensorImageDataset:
    """CIFAR-10 (python version) from ``root/cifar-10-batches-py``.

    Args:
        root: folder holding cifar-10-batches-py/ (nothing is downloaded).
        image_size: side of the (resized) square images; 32 keeps the originals.
    """
    from torchvision.datasets import CIFAR10

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    ds = _open(CIFAR10, root, "CIFAR-10", f"{root}/cifar-10-batches-py/",
               "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", train=split == "train")
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    return TensorImageDataset(resize_square(images, image_size), ds.targets, ds.classes)


def create_stl10(*, split: Literal["train", "test", "train+unlabeled", "unlabeled"] = "train",
                 root: str = "data", image_size: int = 96) -> TensorImageDataset:
    """STL-10 (binary version) from ``root/stl10_binary``; 'train+unlabeled' adds 100k images.

    Args:
        root: folder holding stl10_binary/ (nothing is downloaded).
        image_size: side of the (resized) square images; 96 keeps the originals.
    """
    from torchvision.datasets import STL10

    ds = _open(STL10, root, "STL-10", f"{root}/stl10_binary/",
               "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", split=split)
    labels = ds.labels if ds.labels is not None else np.full(len(ds.data), UNLABELED)
    images = torch.from_numpy(np.ascontiguousarray(ds.data))
    classes = getattr(ds, "classes", None) or list(STL10_CLASSES)
    return TensorImageDataset(resize_square(images, image_size), labels, classes)
