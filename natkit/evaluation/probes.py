"""Probes on frozen features; each picks its setting on a validation split, never the test split.

Every probe follows one protocol (:mod:`natkit.evaluation.selection`): hold out a
stratified validation fraction of the training features, standardise with the
statistics of the part it fits on, try each setting and keep the best on
validation, then refit on the whole training split and report accuracy on the
test split once.

Features come from a source (a tensor, or a float16 store on disk) and are read
in chunks of at most ``chunk_mb`` MiB of float32 (:class:`~natkit.evaluation.rows.Rows`),
standardised as they are read. This module holds the linear and MLP probes; the
kNN probe is :mod:`natkit.evaluation.knn`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natkit.evaluation.knn import knn_probe
from natkit.evaluation.reporting import QUIET, ProbeProgress, ProbeResult
from natkit.evaluation.rows import DEFAULT_CHUNK_MB, Rows
from natkit.evaluation.selection import Predictor, predictor, select
from natkit.evaluation.store import FeatureSource

# knn_probe is re-exported: benchmarks/knn_gap.py imports it from here
__all__ = ["fit_classifier", "fit_linear", "knn_probe", "linear_model", "linear_probe",
           "mlp_model", "mlp_probe"]

_BLOCK = 32  # consecutive rows read together when the MLP shuffles data bigger than a chunk


def linear_model(d: int, classes: int) -> nn.Module:
    """A linear classifier."""
    return nn.Linear(d, classes)


def mlp_model(d: int, classes: int, hidden: int = 4096) -> nn.Module:
    """The paper's transfer MLP: hidden-BN-ReLU-Dropout-hidden-BN-ReLU-classes."""
    return nn.Sequential(
        nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, classes),
    )


def _as_rows(x: torch.Tensor | Rows, y: torch.Tensor | None) -> Rows:
    if isinstance(x, Rows):
        return x
    if y is None:
        raise ValueError("labels are needed with a feature tensor")
    return Rows.labelled(x, y)


def _shuffled_batches(rows: Rows, batch_size: int, g: torch.Generator,
                      device: torch.device | str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of minibatches over rows bigger than a chunk, in a seeded shuffled order.

    Blocks of ``_BLOCK`` consecutive rows are taken in random order, a chunk's worth
    at a time, and each chunk is shuffled: every batch mixes rows from all over the
    data, and each read is a run of neighbouring rows.
    """
    n = len(rows)
    blocks = torch.randperm(math.ceil(n / _BLOCK), generator=g)
    order = (blocks[:, None] * _BLOCK + torch.arange(_BLOCK)).flatten()
    order = order[order < n]
    window = max(batch_size, rows.chunk // batch_size * batch_size)  # whole batches per chunk
    for start in range(0, n, window):
        positions = order[start:start + window].sort().values.numpy()
        x = rows.read(positions).to(device)
        y = rows.labels[torch.from_numpy(positions)].to(device)
        for idx in torch.randperm(len(positions), generator=g).to(device).split(batch_size):
            yield x[idx], y[idx]


def fit_classifier(model: nn.Module, x: torch.Tensor | Rows, y: torch.Tensor | None = None, *,
                   epochs: int, weight_decay: float, seed: int, batch_size: int = 256,
                   lr: float = 1e-3, device: torch.device | str = "cpu",
                   progress: ProbeProgress = QUIET) -> nn.Module:
    """Train ``model`` with Adam (L2 ``weight_decay``) and a cosine schedule; returns it.

    ``x`` is a feature tensor (with labels ``y``) or :class:`Rows`; rows bigger than a
    chunk are streamed in a block-shuffled order. ``progress`` advances by one unit per epoch.
    """
    rows = _as_rows(x, y)
    g = torch.Generator().manual_seed(seed)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(rows) / batch_size))
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    whole = len(rows) <= rows.chunk
    if whole:
        all_x, all_y = next(rows.chunks(device))
    for _ in range(epochs):
        if whole:  # the exact full shuffle of every epoch
            order = torch.randperm(len(rows), generator=g).to(device)
            batches = ((all_x[idx], all_y[idx]) for idx in order.split(batch_size))
        else:
            batches = _shuffled_batches(rows, batch_size, g, device)
        for xb, yb in batches:
            if len(yb) < 2 and has_bn:
                continue  # BatchNorm cannot train on a single sample
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        progress.advance(1)
    return model.eval()


def fit_linear(x: torch.Tensor | Rows, y: torch.Tensor | None = None, *, weight_decay: float,
               iterations: int = 200, device: torch.device | str = "cpu",
               progress: ProbeProgress = QUIET) -> nn.Module:
    """L2-regularised multinomial logistic regression, solved full-batch with L-BFGS.

    The problem is convex, so the result depends on the data and ``weight_decay``
    only: no learning rate or schedule to tune, and nothing left undertrained. Rows
    bigger than a chunk are streamed: each evaluation of the loss sums its gradient
    over the chunks, so the optimisation is the same full-batch one.
    """
    rows = _as_rows(x, y)
    n = len(rows)
    model = linear_model(rows.dim, int(rows.labels.max()) + 1).to(device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iterations,
                                  history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        seen = 0
        for xb, yb in rows.chunks(device):
            seen += len(yb)
            # the mean over a chunk, weighted by its share: exactly the old loss for one chunk
            loss = F.cross_entropy(model(xb), yb) * (len(yb) / n)
            if seen == n:  # the regulariser joins the last chunk's backward pass
                loss = loss + 0.5 * weight_decay * model.weight.pow(2).sum()
            loss.backward()
            total += loss.detach()
        progress.tick()
        return total

    optimizer.step(closure)
    return model.eval()


def linear_probe(train_x: torch.Tensor | FeatureSource, train_y: torch.Tensor,
                 test_x: torch.Tensor | FeatureSource, test_y: torch.Tensor, *,
                 weight_decays: Sequence[float], iterations: int = 200,
                 val_fraction: float = 0.2, seed: int = 0, device: torch.device | str = "cpu",
                 chunk_mb: float = DEFAULT_CHUNK_MB,
                 progress: ProbeProgress = QUIET) -> ProbeResult:
    """Multinomial logistic regression; the L2 strength is chosen on validation.

    Rows with a negative label are left out. ``progress`` advances by one unit per
    fit: ``len(weight_decays) + 1`` in all.
    """

    def fit(rows: Rows, setting: dict[str, Any]) -> Predictor:
        return predictor(fit_linear(rows, weight_decay=setting["weight_decay"],
                                     iterations=iterations, device=device, progress=progress))

    settings = [{"weight_decay": wd} for wd in weight_decays]
    return select(Rows.labelled(train_x, train_y, chunk_mb),
                   Rows.labelled(test_x, test_y, chunk_mb), settings, val_fraction, seed, fit,
                   progress, lambda s: f"L2 strength {s['weight_decay']:g}", units_per_fit=1)


def mlp_probe(train_x: torch.Tensor | FeatureSource, train_y: torch.Tensor,
              test_x: torch.Tensor | FeatureSource, test_y: torch.Tensor, *, hidden: int,
              weight_decays: Sequence[float], epochs: int = 60, val_fraction: float = 0.2,
              seed: int = 0, batch_size: int = 256, device: torch.device | str = "cpu",
              chunk_mb: float = DEFAULT_CHUNK_MB,
              progress: ProbeProgress = QUIET) -> ProbeResult:
    """The paper's two-hidden-layer MLP; the weight decay is chosen on validation.

    ``progress`` advances by one unit per epoch: ``(len(weight_decays) + 1) * epochs`` in all.
    """

    def fit(rows: Rows, setting: dict[str, Any]) -> Predictor:
        torch.manual_seed(seed)
        model = fit_classifier(mlp_model(rows.dim, int(rows.labels.max()) + 1, hidden), rows,
                               epochs=epochs, weight_decay=setting["weight_decay"], seed=seed,
                               batch_size=batch_size, device=device, progress=progress)
        return predictor(model)

    settings = [{"weight_decay": wd} for wd in weight_decays]
    return select(Rows.labelled(train_x, train_y, chunk_mb),
                   Rows.labelled(test_x, test_y, chunk_mb), settings, val_fraction, seed, fit,
                   progress, lambda s: f"weight decay {s['weight_decay']:g}, {epochs} epochs")
