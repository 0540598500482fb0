"""Grayscale then Sobel gradients: the paper's input (2 channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from natkit.preprocess.base import Preprocessor, to_channels


class Sobel(Preprocessor):
    """Grayscale (channel mean) then horizontal and vertical Sobel filters: 2 channels.

    Borders are replicated rather than zero-padded, so a flat background yields
    no gradient at the image edge. ``normalize`` first standardises each image over
    all its pixels and channels, as the authors' data loader does (torchnet's
    ``transform.normalize``), so every image's gradients have the same scale.
    """

    out_channels = 2

    def __init__(self, in_channels: int = 3, normalize: bool = False) -> None:
        super().__init__(in_channels)
        self.normalize = normalize
        gx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kernels", torch.stack([gx, gx.t()]).unsqueeze(1))

    def compose_filters(self, weight: torch.Tensor) -> torch.Tensor:
        # conv1 after Sobel is one linear filter on the grayscale image: the full
        # convolution of each filter with the Sobel kernels, summed over the two channels
        flipped = self.kernels.flip(-1, -2).transpose(0, 1).to(weight.dtype)
        gray = F.conv2d(F.pad(weight, (2, 2, 2, 2)), flipped)
        return gray.expand(-1, self.in_channels, -1, -1) / self.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_channels(x, self.in_channels)
        if self.normalize:
            flat = x.flatten(1)
            mean = flat.mean(dim=1).view(-1, 1, 1, 1)
            std = flat.std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)  # a blank image stays blank
            x = (x - mean) / std
        gray = x.mean(dim=1, keepdim=True)
        return F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), self.kernels.to(gray.dtype))


def create(*, in_channels: int = 3, normalize: bool = False) -> Sobel:
    """Grayscale + Sobel x/y gradients, 2 channels (the paper's input).

    Args:
        normalize: standardise each image (mean 0, std 1 over its pixels) first, as the
            authors' loader does.
    """
    return Sobel(in_channels, normalize)
