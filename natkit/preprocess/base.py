"""The preprocessor interface: a frozen module that accepts 1- or 3-channel images."""

from __future__ import annotations

import torch
from torch import nn


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert a batch ``[n, 1|3, h, w]`` to ``channels`` (grayscale is the channel mean)."""
    have = x.shape[1]
    if have == channels:
        return x
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    if have == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


class Preprocessor(nn.Module):
    """A fixed, non-trained first layer; subclasses set ``out_channels`` and define ``forward``.

    Its tensors are buffers, never parameters, so no optimizer can train them.
    ``normalize`` says whether ``forward`` first standardises each image on its own; the
    transfer probe turns it off while it standardises an image's test crops together.
    """

    out_channels: int
    normalize: bool = False

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels

    def compose_filters(self, weight: torch.Tensor) -> torch.Tensor | None:
        """First-layer filters ``[out, out_channels, k, k]`` as seen from the input image.

        Returns ``[out, in_channels, k', k']`` for a linear preprocessor that can
        be folded into the filters (used to draw them), or None.
        """
        return None

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
