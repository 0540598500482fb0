"""Reading one image file: header checks, JPEG draft decoding, conversion to 8-bit RGB."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# what a broken, truncated or hostile file raises; a header claiming more pixels than
# PIL's limit is refused, not decoded (a decompression bomb)
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
              Image.DecompressionBombWarning)


class ImageReadWarning(UserWarning):
    """An image file could not be read and was skipped."""


@contextlib.contextmanager
def bombs_refused() -> Iterator[None]:
    """Turn PIL's warning about an image over its pixel limit into an error: never decode one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def header_problem(path: Path) -> str | None:
    """Why ``path``'s header cannot be read (None when it can); opens the header only."""
    try:
        with bombs_refused(), Image.open(path) as image:
            image.size  # noqa: B018
    except UNREADABLE as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


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


def draft_for(image: Image.Image, size: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when its shorter side stays >= ``size``.

    libjpeg then skips most of the inverse DCT work: a 3000x2000 photograph
    loaded at 224 px decodes at 375x250, several times faster, and the
    antialiased resize that follows gives nearly the same pixels.
    """
    if image.format != "JPEG":
        return
    w, h = image.size
    scale = size / min(w, h)
    # PIL picks the largest reduction keeping both sides >= the requested ones
    image.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))


EXIF_ORIENTATION = 0x0112  # 1: as stored; 2-8: mirrored and/or rotated by the camera


def upright(image: Image.Image) -> Image.Image:
    """``image`` as the camera held it: its EXIF orientation applied (no copy when there is none)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def load_image(source: Path | BinaryIO, size: int, *, draft: bool = True) -> torch.Tensor:
    """Read an image, resize its shorter side to ``size`` and centre-crop: uint8 ``[3, size, size]``."""
    with bombs_refused(), Image.open(source) as image:
        if draft:
            draft_for(image, size)
        image.load()
        image = upright(image)
        # most photographs are RGB already: resized as they are, without a full-size copy
        rgb = image if image.mode == "RGB" else Image.fromarray(to_rgb_array(image))
        square = centre_square(rgb, size)
    # transposed by numpy, one thread: torch's parallel copy stalls when cores are busy
    return torch.from_numpy(np.ascontiguousarray(np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)))


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """The image's shorter side resized to ``size`` and centre-cropped to ``size`` x ``size``."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    # the central square, resized (antialiased), without resizing the pixels the crop throws away
    return image.resize((size, size), Image.Resampling.BILINEAR,
                        box=(left, top, left + side, top + side))


def read_bytes(path: Path) -> torch.Tensor:
    """The file's bytes as a 1-D uint8 tensor (empty when it cannot be read)."""
    try:
        data = path.read_bytes()
    except OSError:
        return torch.zeros(0, dtype=torch.uint8)  # decoding it fails later, with a warning
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else \
        torch.zeros(0, dtype=torch.uint8)
