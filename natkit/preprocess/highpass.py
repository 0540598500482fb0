"""High-pass filtering: the image minus its Gaussian blur."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from natkit.preprocess.base import Preprocessor, to_channels


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class HighPass(Preprocessor):
    """Each channel minus its Gaussian blur (separable, reflected borders)."""

    def __init__(self, in_channels: int = 3, sigma: float = 2.0) -> None:
        super().__init__(in_channels)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.out_channels = in_channels
        self.sigma = sigma
        self.register_buffer("kernel", gaussian_kernel1d(sigma))

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of every channel."""
        c, r = x.shape[1], self.kernel.numel() // 2
        k = self.kernel.to(x.dtype)
        mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                     groups=c)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                        groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels(x, self.in_channels)
        return x - self.blur(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma}"


def create(*, in_channels: int = 3, sigma: float = 2.0) -> HighPass:
    """Image minus its Gaussian blur (the paper's high-pass ablation).

    Args:
        sigma: standard deviation of the Gaussian blur, in pixels.
    """
    return HighPass(in_channels, sigma)
