"""The protocol every probe follows: a setting chosen on validation, a refit, the test split once.

A stratified validation fraction of the training rows is held out, the rows are
standardised with the statistics of the part the probe fits on, each setting is
fit and scored on validation, and the best is refit on the whole training split
(with its own statistics) and scored once on the test split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from natkit.datasets import stratified_split
from natkit.evaluation.reporting import QUIET, ProbeProgress, ProbeResult
from natkit.evaluation.rows import Rows, statistics

_PREDICT_ROWS = 4096  # rows per forward pass when predicting
# The training accuracy is read on at most this many training rows (a seeded sample): on
# ImageNet the kNN probe's whole training split against itself would be 1.28M^2 similarities.
TRAIN_ACCURACY_ROWS = 20_000

# A fitted probe: the labels it predicts for some rows.
Predictor = Callable[[Rows], torch.Tensor]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = _PREDICT_ROWS) -> torch.Tensor:
    """Predicted labels of ``model`` for features ``x`` (on the CPU)."""
    device = next(model.parameters()).device
    return torch.cat([model(xs.to(device)).argmax(dim=1).cpu() for xs in x.split(batch_size)])


def predictor(model: nn.Module) -> Predictor:
    """The labels ``model`` predicts for rows, read chunk by chunk on the model's device."""
    device = next(model.parameters()).device
    return lambda rows: torch.cat([predict(model, x) for x, _ in rows.chunks(device)])


def _accuracy(predictor: Predictor, rows: Rows) -> float:
    return float((predictor(rows) == rows.labels).float().mean()) if len(rows) else 0.0


def select(train: Rows, test: Rows, settings: Sequence[dict[str, Any]], val_fraction: float,
           seed: int, fit: Callable[[Rows, dict[str, Any]], Predictor],
           progress: ProbeProgress = QUIET, describe: Callable[[dict[str, Any]], str] = str,
           units_per_fit: int = 0) -> ProbeResult:
    """Choose a setting on validation, refit on the whole training split, test once.

    ``progress`` hears of each of the ``len(settings) + 1`` fits as a step, and
    advances by ``units_per_fit`` after each (0 when ``fit`` advances it itself).
    """
    total = len(settings) + 1
    fit_pos, val_pos = stratified_split(train.labels.numpy(), val_fraction, seed)
    part = train.take(fit_pos)
    mean, std = statistics(part)
    fit_rows, val_rows = part.standardised(mean, std), train.take(val_pos).standardised(mean, std)
    scores = []
    for i, setting in enumerate(settings):
        progress.step(f"{describe(setting)} on the validation split ({i + 1}/{total})")
        scores.append(_accuracy(fit(fit_rows, setting), val_rows))
        progress.advance(units_per_fit)
    best = max(range(len(settings)), key=lambda i: (scores[i], -i))
    del fit_rows, val_rows  # their kept chunks are no longer needed
    mean, std = statistics(train)
    full, held = train.standardised(mean, std), test.standardised(mean, std)
    progress.step(f"{describe(settings[best])} refit on the whole training split "
                  f"({total}/{total})")
    final = fit(full, settings[best])
    result = ProbeResult(_accuracy(final, held), dict(settings[best]), scores[best],
                         _accuracy(final, _sample(full, TRAIN_ACCURACY_ROWS, seed)))
    progress.advance(units_per_fit)
    return result


def _sample(rows: Rows, limit: int, seed: int) -> Rows:
    """``rows`` when there are at most ``limit``, else a seeded sample of ``limit`` of them."""
    if len(rows) <= limit:
        return rows
    picked = np.random.default_rng(seed).choice(len(rows), limit, replace=False)
    return rows.take(np.sort(picked))
