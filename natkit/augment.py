"""Batched augmentations on the device: random (resized) crops and horizontal flips."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from natkit.transfer import to_float


def random_resized_crop(images: torch.Tensor, generator: torch.Generator,
                        scale: Sequence[float] = (0.5, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                        part: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop each image at a random area fraction and aspect ratio, resize back, maybe flip.

    The random numbers come from ``generator`` on the CPU, so a batch is
    augmented identically on any device. ``scale`` is a ``[low, high]`` range of
    area fractions in (0, 1], ``ratio`` a ``[low, high]`` range of aspect ratios > 0.
    ``part=(start, total)`` says these images are rows ``start..`` of a batch of
    ``total``: the random numbers of the whole batch are drawn and this part's
    used, so a batch split over ranks is augmented as it is in one process.
    """
    _check_range("scale", scale, upper=1.0)
    _check_range("ratio", ratio)
    n = images.shape[0]
    start, total = part if part is not None else (0, n)
    u = torch.rand(total, 5, generator=generator, dtype=torch.float64)[start:start + n]
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # half-widths in [-1, 1] coordinates
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n, dtype=torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def random_crop(images: torch.Tensor, generator: torch.Generator, size: int,
                flip: bool = True, part: tuple[int, int] | None = None) -> torch.Tensor:
    """Take a ``size`` x ``size`` crop of each image at a random offset, not resized; maybe flip.

    The authors' training crops (imagenet.lua ``data.randomcrop``): every offset
    from 0 to the image's side minus ``size`` is equally likely, and a flip has
    probability 1/2. The random numbers come from ``generator`` on the CPU, and
    ``part=(start, total)`` picks this part's rows of the whole batch's draws,
    as in :func:`random_resized_crop`.
    """
    n, _, height, width = images.shape
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size must be between 1 and the images' {height}x{width}, "
                         f"got {size}")
    start, total = part if part is not None else (0, n)
    u = torch.rand(total, 3, generator=generator, dtype=torch.float64)[start:start + n]
    top = (u[:, 0] * (height - size + 1)).long().clamp(max=height - size)
    left = (u[:, 1] * (width - size + 1)).long().clamp(max=width - size)
    step = torch.arange(size)
    cols = left[:, None] + step  # [n, size]
    if flip:
        flipped = u[:, 2] < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    rows = (top[:, None] + step).to(images.device)
    cols = cols.to(images.device)
    batch = torch.arange(n, device=images.device)
    channel = torch.arange(images.shape[1], device=images.device)
    # one gather for the whole batch: [n, 1, 1, 1], [1, c, 1, 1], [n, 1, size, 1], [n, 1, 1, size]
    return images[batch[:, None, None, None], channel[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` of images larger than that (a side not larger is kept).

    The offsets are rounded down: 16 px on each side for 224 of 256, as imagenet.lua's
    ``image.crop(img, 'c', 224, 224)`` of the short-side-256 image.
    """
    height, width = images.shape[-2:]
    top, left = max(height - size, 0) // 2, max(width - size, 0) // 2
    return images[..., top:top + min(size, height), left:left + min(size, width)]


def _check_range(name: str, values: Sequence[float], upper: float = math.inf) -> None:
    if len(values) != 2:
        raise ValueError(f"{name} must be [low, high], got {list(values)}")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high <= upper):
        bound = f" <= {upper:g}" if math.isfinite(upper) else ""
        raise ValueError(f"{name} must be [low, high] with 0 < low <= high{bound}, got {list(values)}")


def augment_batch(images: torch.Tensor, options: Any, generator: torch.Generator,
                  part: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """A training batch, augmented as ``options`` (a config's ``augment`` section) says.

    Fixed-size crops (``crop_size``, the authors' recipe) are cut from uint8 images
    before they become floats; random resized crops are taken of the floats.
    ``part`` is this rank's (offset, global batch size), so that every rank draws
    the global batch's augmentations and applies its own share.
    """
    if options.crop_size is not None:
        return to_float(random_crop(images, generator, options.crop_size, options.flip, part=part))
    return random_resized_crop(to_float(images), generator, options.crop_scale, options.crop_ratio,
                               options.flip, part=part)
