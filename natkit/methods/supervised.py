"""Supervised training on the dataset's labels, on the same engine (the paper's Tables 1 and 2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from natkit.errors import ConfigError
from natkit.methods.base import Batch, Method, MethodContext, StepLoss


class Supervised(Method):
    """Supervised training on the labels: softmax cross-entropy or the square loss."""

    classifier = True

    def __init__(self, *, context: MethodContext,
                 loss: Literal["softmax", "square"] = "softmax") -> None:
        """Supervised training on the labels (for the paper's ablations).

        Args:
            loss: softmax cross-entropy, or the square loss between L2-normalised outputs and
                one-hot classes.
        """
        split = context.config.train.split
        if bool((context.labels < 0).any()):
            raise ConfigError(f"method: supervised training needs labels, but split '{split}' "
                              "has unlabeled images")
        classes = len(torch.unique(context.labels))
        if classes < 2:
            raise ConfigError(f"data: the '{split}' split has {classes} labelled class(es); "
                              "supervised training needs at least 2")
        self.loss_name = loss
        self.normalize = loss == "square"
        self.head_dim = context.num_classes

    def loss(self, outputs: torch.Tensor, batch: Batch) -> StepLoss:
        labels = batch.labels.to(outputs.device, non_blocking=True)
        if self.loss_name == "softmax":
            return StepLoss(F.cross_entropy(outputs, labels))
        one_hot = F.one_hot(labels, outputs.shape[1]).to(outputs)
        return StepLoss((outputs - one_hot).pow(2).sum(dim=1).mean())

    def describe(self) -> str:
        return f"loss {self.loss_name}"
