"""The raw image, as is (the paper's 'clean' input)."""

from __future__ import annotations

import torch

from natkit.preprocess.base import Preprocessor, to_channels


class Clean(Preprocessor):
    """Pass images through unchanged (converted to ``in_channels`` if needed)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        self.out_channels = in_channels

    def compose_filters(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels(x, self.in_channels)


def create(*, in_channels: int = 3) -> Clean:
    """Raw pixels, unchanged (the paper's 'clean' ablation)."""
    return Clean(in_channels)
