"""What a probe reports: its result, and its progress while it works."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProbeResult:
    """A probe's test accuracy, the setting chosen on validation, and its other accuracies."""

    accuracy: float  # on the test split, once
    setting: dict[str, Any]
    val_accuracy: float  # of the chosen setting, fit on the rest of the training split
    train_accuracy: float  # of the final probe on the training split (at most 20k rows of it)


class ProbeProgress:
    """What a probe reports while it works; this one ignores it (see natkit.progress)."""

    def step(self, detail: str) -> None:
        """A fit (or a prediction) begins."""

    def advance(self, units: int = 1) -> None:
        """``units`` of work are done: a fit (linear), an epoch (MLP), a prediction (kNN)."""

    def tick(self) -> None:
        """Still working, no unit finished."""


QUIET = ProbeProgress()
