"""Probes on frozen features; each picks its setting on a validation split, never the test split.

Every probe follows one protocol: hold out a stratified validation fraction of
the training features, standardise with the statistics of the part it fits
on, try each setting and keep the best on validation, then refit on the whole
training split and report accuracy on the test split once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natkit.datasets import stratified_split


@dataclass(frozen=True)
class ProbeResult:
    """A probe's test accuracy, the setting chosen on validation, and its other accuracies."""

    accuracy: float  # on the test split, once
    setting: dict[str, Any]
    val_accuracy: float  # of the chosen setting, fit on the rest of the training split
    train_accuracy: float  # of the final probe on the training split it was fit on


Predictor = Callable[[torch.Tensor], torch.Tensor]  # features -> predicted labels


class ProbeProgress:
    """What a probe reports while it works; this one ignores it (see natkit.progress)."""

    def step(self, detail: str) -> None:
        """A fit (or a prediction) begins."""

    def advance(self, units: int = 1) -> None:
        """``units`` of work are done: a fit (linear), an epoch (MLP), a prediction (kNN)."""

    def tick(self) -> None:
        """Still working, no unit finished."""


QUIET = ProbeProgress()


def standardize(fit: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Centre and scale every feature with the statistics of ``fit`` only."""
    mean = fit.mean(dim=0, keepdim=True)
    std = fit.std(dim=0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (fit, *others)]


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


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                   weight_decay: float, seed: int, batch_size: int = 256, lr: float = 1e-3,
                   device: torch.device | str = "cpu",
                   progress: ProbeProgress = QUIET) -> nn.Module:
    """Train ``model`` with Adam (L2 ``weight_decay``) and a cosine schedule; returns it.

    ``progress`` advances by one unit per epoch.
    """
    g = torch.Generator().manual_seed(seed)
    model = model.to(device).train()
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(device)
        for idx in order.split(batch_size):
            if len(idx) < 2 and any(isinstance(m, nn.BatchNorm1d) for m in model.modules()):
                continue  # BatchNorm cannot train on a single sample
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        progress.advance(1)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Predicted labels of ``model`` for features ``x`` (on the CPU)."""
    device = next(model.parameters()).device
    return torch.cat([model(xs.to(device)).argmax(dim=1).cpu() for xs in x.split(batch_size)])


def accuracy(predictor: Predictor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of a predictor on ``(x, y)``."""
    return float((predictor(x) == y).float().mean()) if len(y) else 0.0


def _select(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
            test_y: torch.Tensor, settings: Sequence[dict[str, Any]], val_fraction: float,
            seed: int, fit: Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], Predictor],
            progress: ProbeProgress = QUIET, describe: Callable[[dict[str, Any]], str] = str,
            units_per_fit: int = 0) -> ProbeResult:
    """Choose a setting on validation, refit on the whole training split, test once.

    ``progress`` hears of each of the ``len(settings) + 1`` fits as a step, and
    advances by ``units_per_fit`` after each (0 when ``fit`` advances it itself).
    """
    total = len(settings) + 1
    fit_idx, val_idx = stratified_split(train_y.numpy(), val_fraction, seed)
    fit_idx, val_idx = torch.as_tensor(fit_idx), torch.as_tensor(val_idx)
    fit_x, val_x = standardize(train_x[fit_idx], train_x[val_idx])
    scores = []
    for i, setting in enumerate(settings):
        progress.step(f"{describe(setting)} on the validation split ({i + 1}/{total})")
        scores.append(accuracy(fit(fit_x, train_y[fit_idx], setting), val_x, train_y[val_idx]))
        progress.advance(units_per_fit)
    best = max(range(len(settings)), key=lambda i: (scores[i], -i))
    full_x, held_x = standardize(train_x, test_x)
    progress.step(f"{describe(settings[best])} refit on the whole training split "
                  f"({total}/{total})")
    final = fit(full_x, train_y, settings[best])
    result = ProbeResult(accuracy(final, held_x, test_y), dict(settings[best]), scores[best],
                         accuracy(final, full_x, train_y))
    progress.advance(units_per_fit)
    return result


def fit_linear(x: torch.Tensor, y: torch.Tensor, *, weight_decay: float, iterations: int = 200,
               device: torch.device | str = "cpu", progress: ProbeProgress = QUIET) -> nn.Module:
    """L2-regularised multinomial logistic regression, solved full-batch with L-BFGS.

    The problem is convex, so the result depends on the data and ``weight_decay``
    only: no learning rate or schedule to tune, and nothing left undertrained.
    """
    model = linear_model(x.shape[1], int(y.max()) + 1).to(device)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iterations,
                                  history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y) + 0.5 * weight_decay * model.weight.pow(2).sum()
        loss.backward()
        progress.tick()
        return loss

    optimizer.step(closure)
    return model.eval()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, *, weight_decays: Sequence[float], iterations: int = 200,
                 val_fraction: float = 0.2, seed: int = 0,
                 device: torch.device | str = "cpu",
                 progress: ProbeProgress = QUIET) -> ProbeResult:
    """Multinomial logistic regression; the L2 strength is chosen on validation.

    ``progress`` advances by one unit per fit: ``len(weight_decays) + 1`` in all.
    """

    def fit(x: torch.Tensor, y: torch.Tensor, setting: dict[str, Any]) -> Predictor:
        model = fit_linear(x, y, weight_decay=setting["weight_decay"], iterations=iterations,
                           device=device, progress=progress)
        return lambda features: predict(model, features)

    settings = [{"weight_decay": wd} for wd in weight_decays]
    return _select(train_x, train_y, test_x, test_y, settings, val_fraction, seed, fit,
                   progress, lambda s: f"L2 strength {s['weight_decay']:g}", units_per_fit=1)


def mlp_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
              test_y: torch.Tensor, *, hidden: int, weight_decays: Sequence[float],
              epochs: int = 60, val_fraction: float = 0.2, seed: int = 0, batch_size: int = 256,
              device: torch.device | str = "cpu",
              progress: ProbeProgress = QUIET) -> ProbeResult:
    """The paper's two-hidden-layer MLP; the weight decay is chosen on validation.

    ``progress`` advances by one unit per epoch: ``(len(weight_decays) + 1) * epochs`` in all.
    """

    def fit(x: torch.Tensor, y: torch.Tensor, setting: dict[str, Any]) -> Predictor:
        torch.manual_seed(seed)
        model = fit_classifier(mlp_model(x.shape[1], int(y.max()) + 1, hidden), x, y,
                               epochs=epochs, weight_decay=setting["weight_decay"], seed=seed,
                               batch_size=batch_size, device=device, progress=progress)
        return lambda features: predict(model, features)

    settings = [{"weight_decay": wd} for wd in weight_decays]
    return _select(train_x, train_y, test_x, test_y, settings, val_fraction, seed, fit,
                   progress, lambda s: f"weight decay {s['weight_decay']:g}, {epochs} epochs")


@torch.no_grad()
def knn_predict(bank_x: torch.Tensor, bank_y: torch.Tensor, query_x: torch.Tensor,
                ks: Sequence[int], temperature: float = 0.07, chunk: int = 1024,
                progress: ProbeProgress = QUIET) -> dict[int, torch.Tensor]:
    """Cosine kNN with votes weighted by exp(similarity / T), for several k at once."""
    bank = F.normalize(bank_x, dim=1)
    classes = int(bank_y.max()) + 1
    kmax = min(max(ks), len(bank))
    out = {k: [] for k in ks}
    for q in F.normalize(query_x, dim=1).split(chunk):
        sims, idx = (q @ bank.t()).topk(kmax, dim=1)
        weights = (sims / temperature).exp()
        labels = bank_y[idx]
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(len(q), classes)
            votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
            out[k].append(votes.argmax(dim=1))
        progress.tick()
    return {k: torch.cat(v) for k, v in out.items()}


def knn_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
              test_y: torch.Tensor, *, ks: Sequence[int], temperature: float = 0.07,
              val_fraction: float = 0.2, seed: int = 0,
              progress: ProbeProgress = QUIET) -> ProbeResult:
    """Weighted cosine kNN on standardised features; k is chosen on validation.

    ``progress`` advances by one unit per prediction: ``len(ks) + 1`` in all.
    """

    def fit(x: torch.Tensor, y: torch.Tensor, setting: dict[str, Any]) -> Predictor:
        k = setting["k"]
        return lambda features: knn_predict(x, y, features, [k], temperature,
                                            progress=progress)[k]

    settings = [{"k": int(k)} for k in ks]
    return _select(train_x, train_y, test_x, test_y, settings, val_fraction, seed, fit,
                   progress, lambda s: f"k={s['k']}", units_per_fit=1)

