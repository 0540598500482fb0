"""The trained network: preprocessor -> backbone -> projection head (-> L2 normalisation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DROPOUT_PLACES = ("before_each", "between")


class ProjectionHead(nn.Sequential):
    """fc layers from the backbone's features to ``out_features``.

    Each hidden layer is Linear -> BatchNorm -> ReLU, the last layer a plain Linear.
    Dropout goes ``before_each`` hidden layer (torchvision's AlexNet: on the conv
    features too) or only ``between`` hidden layers (the authors' alexnet.lua: once,
    after fc6's ReLU).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 dropout: float = 0.5, batchnorm: bool = True,
                 dropout_where: str = "before_each") -> None:
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


class Network(nn.Module):
    """The whole model of a run; ``normalize`` puts outputs on the unit sphere."""

    def __init__(self, preprocess: nn.Module, backbone: nn.Module, head: nn.Module,
                 normalize: bool) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(self.preprocess(x)))
        return F.normalize(z, dim=1) if self.normalize else z

    def taps(self, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Backbone feature taps of preprocessed ``x`` (see Backbone.forward_taps)."""
        return self.backbone.forward_taps(self.preprocess(x), names)
