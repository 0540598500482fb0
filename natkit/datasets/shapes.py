"""Synthetic shapes: ten classes told apart by outline, never by colour.

Every image is a function of (seed, split, index): a shape of class
``index mod 10`` at a random position, scale and rotation, in a random colour
on a random background colour (the two differ in brightness so the outline has
a gradient), plus pixel noise. Colour carries no class information; gradients
do, which is why NAT needs its Sobel input here, as in the paper.

``background='texture'`` adds a random per-image texture to the background: a
fingerprint that survives crops, which a small NAT network memorises instead of
learning shapes (a harder variant, kept to show that failure).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from natkit.datasets.base import TensorImageDataset
from natkit.values import Bounds, OptionError

CLASSES = ("disc", "ring", "square", "triangle", "star", "cross", "crescent", "hexagon",
           "heart", "arrow")
_SPLIT_CODE = {"train": 0, "test": 1}
_SUPERSAMPLE = 3


def _regular_polygon(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.sin(angles), np.cos(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(points)
    inner_pts = _regular_polygon(points, inner, phase=np.pi / points)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


_POLYGONS = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": _regular_polygon(3),
    "hexagon": _regular_polygon(6, 0.95),
    "star": _star(),
    "cross": np.array([[-0.3, -0.95], [0.3, -0.95], [0.3, -0.3], [0.95, -0.3], [0.95, 0.3],
                       [0.3, 0.3], [0.3, 0.95], [-0.3, 0.95], [-0.3, 0.3], [-0.95, 0.3],
                       [-0.95, -0.3], [-0.3, -0.3]]),
    "arrow": np.array([[0.0, 0.95], [0.75, 0.15], [0.28, 0.15], [0.28, -0.95], [-0.28, -0.95],
                       [-0.28, 0.15], [-0.75, 0.15]]),
}


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over pixels."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def shape_mask(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of shape ``name`` in its own frame (unit radius, centred)."""
    r2 = x * x + y * y
    if name == "disc":
        return r2 < 0.9
    if name == "ring":
        return (r2 < 1.0) & (r2 > 0.36)
    if name == "crescent":
        return (r2 < 1.0) & ((x - 0.45) ** 2 + y * y > 0.64)
    if name == "heart":
        hx, hy = 1.15 * x, 1.15 * y + 0.15
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy**3 < 0
    return _inside_polygon(x, y, _POLYGONS[name])


def _brightness(rgb: np.ndarray) -> float:
    return float(rgb.mean())


def render(label: int, rng: np.random.Generator, size: int,
           background: Literal["flat", "texture"] = "flat", noise: float = 0.03,
           scale: tuple[float, float] = (0.4, 0.75)) -> np.ndarray:
    """Render one image of class ``label`` as float32 ``[3, size, size]`` in [0, 1]."""
    n = size * _SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / n * 2 - 1
    gx, gy = np.meshgrid(coords, -coords)
    scale = rng.uniform(*scale)
    cx, cy = rng.uniform(-(0.95 - scale), 0.95 - scale, size=2)  # the shape stays inside
    theta = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * (gx - cx) + sin * (gy - cy)) / scale
    v = (-sin * (gx - cx) + cos * (gy - cy)) / scale
    mask = shape_mask(CLASSES[label], u, v).astype(np.float32)
    mask = mask.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))

    bg = rng.uniform(0, 1, size=3)
    while True:  # the outline needs a brightness step, whatever the hues
        fg = rng.uniform(0, 1, size=3)
        if abs(_brightness(fg) - _brightness(bg)) >= 0.2:
            break
    back = np.broadcast_to(bg[:, None, None], (3, size, size)).astype(np.float32)
    if background == "texture":
        texture = gaussian_filter(rng.standard_normal((size, size)), sigma=rng.uniform(0.7, 2.0))
        texture = texture / (texture.std() + 1e-8)
        back = np.clip(back * (1 + 0.25 * texture[None]), 0, 1)
    image = back * (1 - mask) + fg[:, None, None] * mask
    image = image + noise * rng.standard_normal(image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def generate(count: int, seed: int, split: str, size: int,
             background: Literal["flat", "texture"] = "flat", noise: float = 0.03,
             scale: tuple[float, float] = (0.4, 0.75)) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 ``[count, 3, size, size]``) and labels, each a function of (seed, split, i)."""
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    labels = np.arange(count) % len(CLASSES)
    for i in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODE[split], i])
        images[i] = np.round(render(int(labels[i]), rng, size, background, noise, scale) * 255)
    return torch.from_numpy(images), torch.from_numpy(labels)


def create(*, split: Literal["train", "test"] = "train",
           image_size: Annotated[int, Bounds(ge=8, le=1024)] = 32,
           num_train: Annotated[int, Bounds(ge=1, le=1_000_000)] = 3000,
           num_test: Annotated[int, Bounds(ge=1, le=1_000_000)] = 2000,
           background: Literal["flat", "texture"] = "flat",
           noise: Annotated[float, Bounds(ge=0.0)] = 0.03,
           scale: Annotated[tuple[float, float], Bounds(ge=0.05, le=0.9, ordered=True)] = (0.4, 0.75),
           seed: Annotated[int, Bounds(ge=0)] = 0) -> TensorImageDataset:
    """Synthetic shapes (10 classes; colour unrelated to class), generated from a seed.

    Args:
        image_size: side of the square images in pixels.
        num_train: images in the training split.
        num_test: images in the test split.
        background: 'flat' colour, or 'texture': a random per-image texture (the harder variant).
        noise: standard deviation of the Gaussian pixel noise (images in [0, 1]).
        scale: range of the shape's radius as a fraction of half the image.
        seed: seed of the images; image i of a split depends only on (seed, split, i).
    """
    if split not in _SPLIT_CODE:
        raise OptionError("split", f"split must be 'train' or 'test', got '{split}'")
    if image_size < 8:
        raise OptionError("image_size", f"image_size must be >= 8, got {image_size}")
    count = num_train if split == "train" else num_test
    if count < 1:
        raise OptionError(f"num_{split}", f"num_{split} must be >= 1, got {count}")
    if not (math.isfinite(noise) and noise >= 0):
        raise OptionError("noise", f"noise must be a finite number >= 0, got {noise}")
    if len(scale) != 2 or not 0.05 <= scale[0] <= scale[1] <= 0.9:
        raise OptionError("scale", "scale must be [low, high] with 0.05 <= low <= high <= 0.9, "
                                   f"got {list(scale)}")
    if seed < 0:
        raise OptionError("seed", f"seed must be >= 0, got {seed}")
    images, labels = generate(count, seed, split, image_size, background, noise, tuple(scale))
    return TensorImageDataset(images, labels, CLASSES)
