"""AlexNet with BatchNorm after every convolution, as in the authors' NAT code."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from natkit.backbones.base import Backbone
from natkit.values import MAX_WIDTH, Bounds
from natkit.weightinit import Init, torch7_init_

PAPER_WIDTHS = (96, 256, 384, 384, 256)
PAPER_FC = (4096, 4096)

# (kernel, stride, padding) of conv1 for each stem; the other layers are fixed.
STEMS = {"imagenet": (11, 4, 2), "small": (5, 1, 2)}


class ConvBlock(nn.Sequential):
    """Conv -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def _pool(size: int) -> int:
    return (size - 3) // 2 + 1


def _conv5_size(image_size: int, stem: str) -> int:
    """The side of conv5's maps (before pool5) for an input of ``image_size`` px."""
    kernel, stride, padding = STEMS[stem]
    size = _pool((image_size + 2 * padding - kernel) // stride + 1)  # conv1, pool1
    return _pool(size)  # conv2 keeps the size, then pool2


def _smallest_input(stem: str) -> int:
    """The smallest input side whose conv5 maps are at least 3x3 with ``stem``."""
    return next(side for side in range(1, 4096) if _conv5_size(side, stem) >= 3)


class AlexNet(Backbone):
    """AlexNet's five conv layers with BatchNorm; pooled conv5 features (torchvision layout).

    The ``imagenet`` stem is the paper's 11x11 stride-4 conv1. At small inputs
    (``stem='auto'`` below 128 px) a 5x5 stride-1 conv1 keeps conv5 maps larger
    than 1x1. conv5's max-pooled map is resized adaptively to the size this
    network was built for, so ``num_features`` holds at any input size.
    ``init`` ``default`` draws the convolutions Kaiming-normal (fan_out) with BatchNorm
    weights 1; ``torch7`` draws them as the authors' Lua code got them
    (:func:`natkit.weightinit.torch7_init_`).
    """

    def __init__(self, in_chans: int = 3, image_size: int = 224,
                 widths: tuple[int, ...] = PAPER_WIDTHS, fc: tuple[int, ...] = PAPER_FC,
                 stem: Literal["auto", "imagenet", "small"] = "auto",
                 init: Init = "default") -> None:
        super().__init__()
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"widths must be 5 positive integers, got {list(widths)}")
        if any(w < 1 for w in fc):
            raise ValueError(f"fc widths must be positive, got {list(fc)}")
        if stem == "auto":
            stem = "imagenet" if image_size >= 128 else "small"
        kernel, stride, padding = STEMS[stem]
        size = _conv5_size(image_size, stem)
        if size < 3:
            smallest = _smallest_input(stem)
            other = ("stem 'small' or " if stem != "small"
                     and _conv5_size(image_size, "small") >= 3 else "")
            raise ValueError(
                f"image_size {image_size} is too small for the '{stem}' stem (conv5 maps would be "
                f"{max(size, 0)}x{max(size, 0)}); use {other}images of at least {smallest} px")
        self.stem = stem
        self.out_size = _pool(size)
        w1, w2, w3, w4, w5 = widths
        self.conv1 = ConvBlock(in_chans, w1, kernel, stride, padding)
        self.conv2 = ConvBlock(w1, w2, 5, padding=2)
        self.conv3 = ConvBlock(w2, w3, 3, padding=1)
        self.conv4 = ConvBlock(w3, w4, 3, padding=1)
        self.conv5 = ConvBlock(w4, w5, 3, padding=1)
        self.num_features = w5 * self.out_size**2
        self.default_head = tuple(fc)
        self.in_chans = in_chans
        if init == "torch7":
            torch7_init_(self)
        elif init == "default":
            self._init_weights()
        else:
            raise ValueError(f"init must be 'default' or 'torch7', got '{init}'")

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def tap_modules(self) -> dict[str, nn.Module]:
        return {f"conv{i}": getattr(self, f"conv{i}") for i in range(1, 6)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv5 map, before the final pooling."""
        x = F.max_pool2d(self.conv1(x), 3, 2)
        x = F.max_pool2d(self.conv2(x), 3, 2)
        return self.conv5(self.conv4(self.conv3(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        if min(x.shape[-2:]) >= 3:
            x = F.max_pool2d(x, 3, 2)
        if x.shape[-2:] != (self.out_size, self.out_size):  # an input of another size
            # (skipped at the built size, where it is the identity: its CUDA backward has no
            # deterministic kernel, so `deterministic: true` would fail on every step)
            x = F.adaptive_max_pool2d(x, self.out_size)
        return torch.flatten(x, 1)


def create(*, in_chans: int = 3, image_size: int = 224,
           widths: Annotated[tuple[int, ...], Bounds(ge=1, le=MAX_WIDTH, length=5)] = PAPER_WIDTHS,
           fc: Annotated[tuple[int, ...], Bounds(ge=1, le=MAX_WIDTH)] = PAPER_FC,
           stem: Literal["auto", "imagenet", "small"] = "auto", init: Init = "default") -> AlexNet:
    """The paper's AlexNet with BatchNorm (widths and fc head configurable).

    Args:
        widths: channels of conv1..conv5 (the paper: 96, 256, 384, 384, 256).
        fc: hidden widths of the fc6-fc7 head used when head.hidden is null (the paper: 4096, 4096).
        stem: conv1 as in the paper ('imagenet': 11x11, stride 4) or for small images ('small': 5x5,
                stride 1); 'auto' picks 'small' below 128 px.
        init: 'default' (Kaiming-normal convolutions, BatchNorm weights 1) or 'torch7' (the
                authors' Lua defaults: conv weights U(+-1/sqrt(fan_in)), BatchNorm weights U(0, 1)).
    """
    return AlexNet(in_chans, image_size, widths, fc, stem, init)
