"""JPEG decoding on the GPU (nvJPEG through torchvision), for ``data.decode: gpu``.

Loader workers only read the files' bytes; the main process decodes each
batch on the GPU in one call and resizes there, so the CPU cores no longer
bound the images per second. Files that are not JPEGs, or that nvJPEG
refuses (CMYK, say), are decoded on the CPU as ``decode: cpu`` would.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from natkit.datasets.images import UNREADABLE, ImageReadWarning, load_image
from natkit.errors import ConfigError

JPEG_MAGIC = (0xFF, 0xD8)


class EncodedBatch(NamedTuple):
    """A batch of encoded files as one uint8 tensor and their lengths.

    A worker hands a batch to the main process through shared memory, one segment per
    tensor: one tensor for the batch, not one per file, is what keeps GPU decoding fed
    (a list of 256 files went at about 2,000 files/s on an H200 machine's 16 cores).
    """

    data: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def pack(cls, files: Sequence[torch.Tensor]) -> EncodedBatch:
        """Concatenate 1-D uint8 ``files`` into one batch."""
        data = torch.cat(list(files)) if files else torch.zeros(0, dtype=torch.uint8)
        return cls(data, torch.tensor([len(f) for f in files], dtype=torch.int64))

    def files(self) -> list[torch.Tensor]:
        """Each file's bytes, as views of ``data``."""
        return list(self.data.split(self.lengths.tolist()))


def check_available() -> None:
    """Refuse GPU decoding where there is no CUDA device (one line, exit code 2)."""
    if not torch.cuda.is_available():
        raise ConfigError("data.decode: 'gpu' needs a CUDA device and none is available here; "
                          "use data.decode=cpu")


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 2 and (int(data[0]), int(data[1])) == JPEG_MAGIC


def square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop a uint8 ``[3, h, w]`` image to a square and resize it to ``size`` (antialiased)."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[:, top:top + side, left:left + side].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


def decode_batch(encoded: Sequence[torch.Tensor], size: int, device: torch.device,
                 names: Sequence[str] | None = None) -> torch.Tensor:
    """Decode a batch of encoded images (1-D uint8 tensors) to uint8 ``[b, 3, size, size]`` on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros(len(encoded), 3, size, size, dtype=torch.uint8, device=device)
    jpegs = [i for i, data in enumerate(encoded) if _is_jpeg(data)]
    decoded: dict[int, torch.Tensor] = {}
    if jpegs:
        try:
            images = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device,
                                 apply_exif_orientation=True)
            decoded = dict(zip(jpegs, images, strict=True))
        except RuntimeError:  # one bad file fails the whole call: retry them one by one
            for i in jpegs:
                with contextlib.suppress(RuntimeError):  # left to the CPU below
                    decoded[i] = decode_jpeg(encoded[i], mode=ImageReadMode.RGB, device=device,
                                             apply_exif_orientation=True)
    for i, data in enumerate(encoded):
        if i in decoded:
            out[i] = square(decoded[i], size)
            continue
        try:  # not a JPEG, or refused by nvJPEG: the CPU path
            out[i] = load_image(io.BytesIO(data.numpy().tobytes()), size).to(device)
        except UNREADABLE as exc:
            name = names[i] if names is not None else f"#{i}"
            warnings.warn(f"skipping unreadable image '{name}': {exc}", ImageReadWarning,
                          stacklevel=2)
    return out
