"""Images stored encoded (JPEG files, shard records): decoded in loader workers, or on the GPU.

What :class:`~natkit.datasets.imagefolder.ImageFolder` and
:class:`~natkit.datasets.shards.ShardDataset` share with the engine's loader: a
worker's ``raw_item`` is the image as uint8 pixels (decoded on the CPU), or its
encoded bytes when ``decode='gpu'``, packed per batch into one
:class:`~natkit.datasets.gpu_decode.EncodedBatch` and decoded by ``decode_raw``
on the device. A set small enough is decoded once and held in memory instead.
"""

from __future__ import annotations

from typing import Literal

import torch

from natkit.datasets.base import ImageDataset
from natkit.datasets.gpu_decode import EncodedBatch

CACHE_LIMIT_BYTES = 1 << 30  # decode everything up front below 1 GiB of pixels


class EncodedImages(ImageDataset):
    """Encoded images read one at a time; subclasses implement ``_read`` and ``_encoded``."""

    image_size: int
    decode: Literal["cpu", "gpu"]
    images: torch.Tensor | None  # every image decoded in memory, or None

    def _read(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 ``[3, image_size, image_size]``, decoded on the CPU."""
        raise NotImplementedError

    def _encoded(self, index: int) -> torch.Tensor:
        """Image ``index``'s encoded bytes as a 1-D uint8 tensor (empty when unreadable)."""
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        return self._read(index).float().div_(255.0)

    def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
        if self.images is not None:
            return self.images[indices].float().div_(255.0)
        return super().get_batch(indices)

    @property
    def _decodes_on_device(self) -> bool:
        return self.decode == "gpu" and self.images is None

    def raw_item(self, index: int) -> torch.Tensor:
        """uint8 pixels, or the encoded bytes when the batch is decoded on the GPU."""
        if self._decodes_on_device:
            return self._encoded(index)
        return self._read(index)

    def raw_batch(self, indices: torch.Tensor) -> torch.Tensor | EncodedBatch:
        if self.images is not None:
            return self.images[indices]
        return self.collate_raw([self.raw_item(int(i)) for i in indices])

    def collate_raw(self, items: list[torch.Tensor]) -> torch.Tensor | EncodedBatch:
        """Stack pixels; pack encoded files (of different lengths) into one tensor."""
        return EncodedBatch.pack(items) if self._decodes_on_device else torch.stack(items)

    def decode_raw(self, raw: torch.Tensor | EncodedBatch, device: torch.device) -> torch.Tensor:
        """Decode a batch of encoded files on ``device``; pixels pass through."""
        if not isinstance(raw, EncodedBatch):
            return raw
        from natkit.datasets.gpu_decode import decode_batch

        return decode_batch(raw.files(), self.image_size, device)
