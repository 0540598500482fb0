"""scikit-learn's 1,797 real 8x8 handwritten digits, resized."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch

from natkit.datasets.base import TensorImageDataset, resize_square, stratified_split
from natkit.values import Bounds


def create(*, split: Literal["train", "test"] = "train",
           image_size: Annotated[int, Bounds(ge=8, le=1024)] = 32,
           test_fraction: float = 0.25, seed: int = 0) -> TensorImageDataset:
    """scikit-learn's handwritten digits (1,797 images, 10 classes), grayscale, resized.

    Args:
        image_size: side of the resized square images (the originals are 8 x 8).
        test_fraction: stratified fraction held out as the test split.
        seed: seed of the train/test split.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    digits = load_digits()
    train_idx, test_idx = stratified_split(digits.target, test_fraction, seed)
    idx = train_idx if split == "train" else test_idx
    pixels = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    images = (resize_square(pixels, image_size).clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImageDataset(images, digits.target[idx], [str(d) for d in range(10)])
