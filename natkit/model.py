"""The trained network: preprocessor -> backbone -> projection head (-> L2 normalisation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natkit.augment import center_crop
from natkit.weightinit import initialise_

DROPOUT_PLACES = ("before_each", "between")


class ProjectionHead(nn.Sequential):
    """fc layers from the backbone's features to ``out_features``.

    Each hidden layer is Linear -> BatchNorm -> ReLU, the last layer a plain Linear.
    Dropout goes ``before_each`` hidden layer (torchvision's AlexNet: on the conv
    features too) or only ``between`` hidden layers (the authors' alexnet.lua: once,
    after fc6's ReLU). ``init`` ``default`` keeps PyTorch's initialisation (BatchNorm
    weights 1); ``torch7`` re-draws every layer as the authors' Lua code got it
    (:func:`natkit.weightinit.torch7_init_`: BatchNorm weights U(0, 1)).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 dropout: float = 0.5, batchnorm: bool = True,
                 dropout_where: str = "before_each", init: str = "default") -> None:
        if dropout_where not in DROPOUT_PLACES:
            raise ValueError(f"dropout_where must be one of {', '.join(DROPOUT_PLACES)}, "
                             f"got '{dropout_where}'")
        layers: list[nn.Module] = []
        width = in_features
        for i, h in enumerate(hidden):
            if dropout > 0 and (dropout_where == "before_each" or i > 0):
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(width, h, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        initialise_(self, init)


class CentreCrop:
    """Forward pre-hook that centre-crops a module's input to ``size`` where it is larger."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x, *rest = args
        if max(x.shape[-2:]) <= self.size:
            return None
        return (center_crop(x, self.size), *rest)


class Network(nn.Module):
    """The whole model of a run; ``normalize`` puts outputs on the unit sphere.

    ``input_size`` is the side of the images it is built for when it trains on
    crops of larger images (``augment.crop_size``). Larger inputs are centre-cropped
    to it on their way into ``preprocess`` (a forward pre-hook there), so whatever
    feeds the network (evaluation features, BatchNorm recalibration, a method's
    outputs of the whole dataset, the transfer probe) sees the centre crop of each
    image, and training crops pass unchanged. None takes every input as it is.
    It is a plain attribute: the state_dict holds the same keys either way.
    """

    def __init__(self, preprocess: nn.Module, backbone: nn.Module, head: nn.Module,
                 normalize: bool, input_size: int | None = None) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.normalize = normalize
        self.input_size = input_size
        if input_size is not None:
            preprocess.register_forward_pre_hook(CentreCrop(input_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(self.preprocess(x)))
        return F.normalize(z, dim=1) if self.normalize else z

    def taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Backbone feature taps of preprocessed ``x`` (see Backbone.forward_taps)."""
        return self.backbone.forward_taps(self.preprocess(x), names)
