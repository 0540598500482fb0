"""The dataset interface, an in-memory implementation and shared helpers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

UNLABELED = -1


class ImageDataset(Dataset):
    """Images of one split as float tensors ``[channels, image_size, image_size]`` in [0, 1].

    ``dataset[i]`` is ``(image, i, label)`` with ``label = -1`` where none exists.
    Subclasses set ``classes``, ``channels``, ``image_size`` and ``labels`` and
    implement ``__len__`` and ``load(i)``.
    """

    classes: list[str]
    channels: int
    image_size: int
    labels: torch.Tensor  # int64 [n], -1 where unlabeled

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a float tensor in [0, 1]."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.load(index), index, int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images for a batch of indices, stacked ``[b, c, h, w]``."""
        return torch.stack([self.load(int(i)) for i in indices])

    # What the training loader moves: the image as stored (uint8 where the dataset keeps
    # uint8, a quarter of float32's bytes); the engine makes floats of it on the device.

    def raw_item(self, index: int) -> torch.Tensor:
        """The image at ``index`` as a loader worker hands it over: uint8 or float in [0, 1]."""
        return self.load(index)

    def raw_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """A batch of :meth:`raw_item` images, stacked."""
        return self.get_batch(indices)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TensorImageDataset(ImageDataset):
    """A dataset held in memory as a uint8 tensor ``[n, c, h, w]``."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                 classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 [n, c, h, w] tensor, got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(self.labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.classes = list(classes)
        self.channels = images.shape[1]
        self.image_size = images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: int) -> torch.Tensor:
        return self.images[index].float().div_(255.0)

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices].float().div_(255.0)

    def raw_item(self, index: int) -> torch.Tensor:
        return self.images[index]

    def raw_batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices]


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 or float batch ``[n, c, h, w]`` to ``size`` x ``size`` (antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    floats = images.float()
    out = F.interpolate(floats, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out


def stratified_split(labels: Sequence[int] | np.ndarray | torch.Tensor, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split holding out ``fraction`` of every class; returns (kept, held_out) indices."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        count = round(fraction * len(members))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)  # each side keeps every class
        held.append(members[:count])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out
