"""Datasets: items are ``(image, index, label)``; labels serve evaluation only."""

from natkit.datasets.base import ImageDataset, TensorImageDataset, resize_square, stratified_split
from natkit.datasets.wrapped import WrappedDataset, wrap_dataset

__all__ = ["ImageDataset", "TensorImageDataset", "WrappedDataset", "resize_square",
           "stratified_split", "wrap_dataset"]
