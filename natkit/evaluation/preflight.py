"""What the evaluation needs of a run, checked before training so that a run never trains in vain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from natkit.errors import ConfigError, clip
from natkit.schema import Config


def check_evaluable(config: Config, dataset: Any, taps: Sequence[str]) -> None:
    """Refuse (ConfigError) a run whose evaluation would fail after training.

    The probes need at least two labelled classes in the training split, and
    ``eval.layer`` must be one of the backbone's feature taps. Nothing is checked
    when ``eval.enabled`` is false.
    """
    if not config.eval.enabled:
        return
    labels = dataset.labels
    classes = len(torch.unique(labels[labels >= 0]))
    if classes < 2:
        raise ConfigError(f"data: the '{config.train.split}' split of {config.data['name']} has "
                          f"{classes} labelled class(es); the probes need at least 2 (add class "
                          f"folders, or set eval.enabled=false to train without evaluating)")
    if config.eval.layer not in taps:
        raise ConfigError(f"eval.layer: '{clip(config.eval.layer)}' is not a tap of backbone "
                          f"'{config.backbone['name']}'; valid: {', '.join(taps)}")
