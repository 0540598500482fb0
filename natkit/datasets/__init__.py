"""Datasets: items are ``(image, index, label)``; labels serve evaluation only."""

from natkit.datasets.base import ImageDataset, TensorImageDataset, resize_square, stratified_split

__all__ = ["ImageDataset", "TensorImageDataset", "resize_square", "stratified_split"]
