"""Probes on frozen features; each picks its setting on a validation split, never the test split.

Every probe follows one protocol: hold out a stratified validation fraction of
the training features, standardise with the statistics of the part it fits
on, try each setting and keep the best on validation, then refit on the whole
training split and report accuracy on the test split once.

Features come from a source (a tensor, or a float16 store on disk) and are read
in chunks of at most ``chunk_mb`` MiB of float32, standardised as they are read:
no probe holds all features, or a standardised copy of them, at once. Data that
fits in one chunk is read once and kept, and every probe then computes exactly
what a probe on an in-memory tensor would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from natkit.datasets import stratified_split
from natkit.evaluation.store import FeatureSource, as_source, moments


@dataclass(frozen=True)
class ProbeResult:
    """A probe's test accuracy, the setting chosen on validation, and its other accuracies."""

    accuracy: float  # on the test split, once
    setting: dict[str, Any]
    val_accuracy: float  # of the chosen setting, fit on the rest of the training split
    train_accuracy: float  # of the final probe on the training split (at most 20k rows of it)



DEFAULT_CHUNK_MB = 256.0  # float32 features a probe holds at once (eval.chunk_mb)
_SIMS_ELEMENTS = 1 << 22  # query-by-bank similarities the kNN holds at once (16 MiB)
_KNN_QUERIES = 1024  # query rows per similarity block
_PREDICT_ROWS = 4096  # rows per forward pass when predicting
_BLOCK = 32  # consecutive rows read together when the MLP shuffles data bigger than a chunk
# The training accuracy is read on at most this many training rows (a seeded sample): on
# ImageNet the kNN probe's whole training split against itself would be 1.28M^2 similarities.
TRAIN_ACCURACY_ROWS = 20_000


class ProbeProgress:
    """What a probe reports while it works; this one ignores it (see natkit.progress)."""

    def step(self, detail: str) -> None:
        """A fit (or a prediction) begins."""

    def advance(self, units: int = 1) -> None:
        """``units`` of work are done: a fit (linear), an epoch (MLP), a prediction (kNN)."""

    def tick(self) -> None:
        """Still working, no unit finished."""


QUIET = ProbeProgress()


def chunk_rows(dim: int, chunk_mb: float) -> int:
    """How many rows of ``dim`` float32 features make ``chunk_mb`` MiB (at least one)."""
    return max(1, int(chunk_mb * 2**20) // (4 * max(dim, 1)))


class Rows:
    """Labelled rows of a feature source, standardised as they are read, ``chunk`` at a time.

    ``index`` (increasing) are rows of ``source`` and ``labels`` their labels.
    """

    def __init__(self, source: FeatureSource, index: np.ndarray, labels: torch.Tensor,
                 chunk: int, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        self.source, self.index, self.labels = source, np.asarray(index, np.int64), labels
        self.chunk, self.mean, self.std = chunk, mean, std
        self._kept: tuple[str, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def labelled(cls, x: torch.Tensor | FeatureSource, y: torch.Tensor,
                 chunk_mb: float = DEFAULT_CHUNK_MB) -> Rows:
        """The rows of ``x`` whose label in ``y`` is known (not negative)."""
        source = as_source(x)
        y = torch.as_tensor(y, dtype=torch.int64).cpu()
        if len(y) != len(source):
            raise ValueError(f"{len(source)} feature rows but {len(y)} labels")
        keep = np.flatnonzero(y.numpy() >= 0)
        return cls(source, keep, y[torch.from_numpy(keep)], chunk_rows(source.dim, chunk_mb))

    def __len__(self) -> int:
        return len(self.index)

    @property
    def dim(self) -> int:
        return self.source.dim

    def take(self, positions: np.ndarray) -> Rows:
        """The rows at ``positions`` (increasing) of this selection."""
        positions = np.asarray(positions, np.int64)
        return Rows(self.source, self.index[positions], self.labels[torch.from_numpy(positions)],
                    self.chunk, self.mean, self.std)

    def standardised(self, mean: torch.Tensor, std: torch.Tensor) -> Rows:
        """The same rows, centred by ``mean`` and scaled by ``std`` when read."""
        return Rows(self.source, self.index, self.labels, self.chunk, mean.float(),
                    std.float().clamp_min(1e-6))

    def read(self, positions: np.ndarray) -> torch.Tensor:
        """Rows at ``positions`` (increasing), standardised, float32 on the CPU."""
        x = self.source.read(self.index[positions])
        if self.mean is not None:
            x.sub_(self.mean).div_(self.std)
        return x

    def chunks(self, device: torch.device | str = "cpu",
               keep: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) on ``device``, in order, at most ``chunk`` rows at a time.

        With ``keep``, rows that fit in one chunk are read once and kept for later passes.
        """
        if len(self) <= self.chunk and keep:
            if self._kept is None or self._kept[0] != str(device):
                self._kept = (str(device), self.read(np.arange(len(self))).to(device),
                              self.labels.to(device))
            yield self._kept[1], self._kept[2]
            return
        for start in range(0, len(self), self.chunk):
            stop = min(start + self.chunk, len(self))
            yield (self.read(np.arange(start, stop)).to(device),
                   self.labels[start:stop].to(device))


def statistics(rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of ``rows``, streamed chunk by chunk (float64)."""
    return moments((x for x, _ in rows.chunks(keep=False)), rows.dim)


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


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = _PREDICT_ROWS) -> torch.Tensor:
    """Predicted labels of ``model`` for features ``x`` (on the CPU)."""
    device = next(model.parameters()).device
    return torch.cat([model(xs.to(device)).argmax(dim=1).cpu() for xs in x.split(batch_size)])


def _predictor(model: nn.Module) -> Callable[[Rows], torch.Tensor]:
    device = next(model.parameters()).device
    return lambda rows: torch.cat([predict(model, x) for x, _ in rows.chunks(device)])


def _accuracy(predictor: Callable[[Rows], torch.Tensor], rows: Rows) -> float:
    return float((predictor(rows) == rows.labels).float().mean()) if len(rows) else 0.0


def _select(train: Rows, test: Rows, settings: Sequence[dict[str, Any]], val_fraction: float,
            seed: int, fit: Callable[[Rows, dict[str, Any]], Callable[[Rows], torch.Tensor]],
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

    def fit(rows: Rows, setting: dict[str, Any]) -> Callable[[Rows], torch.Tensor]:
        return _predictor(fit_linear(rows, weight_decay=setting["weight_decay"],
                                     iterations=iterations, device=device, progress=progress))

    settings = [{"weight_decay": wd} for wd in weight_decays]
    return _select(Rows.labelled(train_x, train_y, chunk_mb),
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

    def fit(rows: Rows, setting: dict[str, Any]) -> Callable[[Rows], torch.Tensor]:
        torch.manual_seed(seed)
        model = fit_classifier(mlp_model(rows.dim, int(rows.labels.max()) + 1, hidden), rows,
                               epochs=epochs, weight_decay=setting["weight_decay"], seed=seed,
                               batch_size=batch_size, device=device, progress=progress)
        return _predictor(model)

    settings = [{"weight_decay": wd} for wd in weight_decays]
    return _select(Rows.labelled(train_x, train_y, chunk_mb),
                   Rows.labelled(test_x, test_y, chunk_mb), settings, val_fraction, seed, fit,
                   progress, lambda s: f"weight decay {s['weight_decay']:g}, {epochs} epochs")


@torch.no_grad()
def nearest(bank: Rows, query: Rows, k: int, device: torch.device | str = "cpu",
            progress: ProbeProgress = QUIET,
            queries: int = _KNN_QUERIES) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per query chunk, the cosine similarities and bank positions of its ``k`` nearest rows.

    Both sides stream chunk by chunk: a running top-k is merged over the bank's
    chunks, and at most ``_SIMS_ELEMENTS`` similarities exist at once. Yields CPU
    tensors ``[rows, k]``, most similar first.
    """
    k = min(k, len(bank))
    step = max(1, _SIMS_ELEMENTS // queries)  # bank rows per similarity block
    for q, _ in query.chunks(device):
        q = F.normalize(q, dim=1)
        best = q.new_empty((len(q), 0))
        where = torch.empty((len(q), 0), dtype=torch.int64, device=q.device)
        offset = 0
        for b, _ in bank.chunks(device):
            b = F.normalize(b, dim=1)
            for start in range(0, len(b), step):
                block = b[start:start + step]
                kk = min(k, len(block))
                found = [(qs @ block.t()).topk(kk, dim=1) for qs in q.split(queries)]
                sims = torch.cat([f.values for f in found])
                idx = torch.cat([f.indices for f in found]) + (offset + start)
                merged = torch.cat([best, sims], dim=1).topk(min(k, best.shape[1] + kk), dim=1)
                best = merged.values
                where = torch.cat([where, idx], dim=1).gather(1, merged.indices)
                progress.tick()
            offset += len(b)
        yield best.cpu(), where.cpu()


def _knn_votes(bank: Rows, query: Rows, ks: Sequence[int], temperature: float,
               device: torch.device | str, progress: ProbeProgress) -> dict[int, torch.Tensor]:
    """Weighted kNN predictions of ``query`` for each k in ``ks``, computed in one pass."""
    classes = int(bank.labels.max()) + 1
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for sims, where in nearest(bank, query, max(ks), device, progress):
        weights = (sims / temperature).exp()
        labels = bank.labels[where]
        for k in ks:
            kk = min(k, sims.shape[1])
            votes = torch.zeros(len(sims), classes)
            votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
            out[k].append(votes.argmax(dim=1))
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.int64) for k, v in out.items()}


@torch.no_grad()
def knn_predict(bank_x: torch.Tensor, bank_y: torch.Tensor, query_x: torch.Tensor,
                ks: Sequence[int], temperature: float = 0.07, chunk: int = _KNN_QUERIES,
                progress: ProbeProgress = QUIET) -> dict[int, torch.Tensor]:
    """Cosine kNN with votes weighted by exp(similarity / T), for several k at once."""
    bank = Rows.labelled(bank_x, bank_y)
    query = Rows(as_source(query_x), np.arange(len(query_x)),
                 torch.zeros(len(query_x), dtype=torch.int64),
                 max(1, chunk))
    return _knn_votes(bank, query, ks, temperature, "cpu", progress)


KNN_NORMALIZATIONS = ("standardize", "l2")


def _unstandardised(rows: Rows) -> Rows:
    """The same rows read as stored, without the probe's standardisation."""
    return Rows(rows.source, rows.index, rows.labels, rows.chunk)


def knn_probe(train_x: torch.Tensor | FeatureSource, train_y: torch.Tensor,
              test_x: torch.Tensor | FeatureSource, test_y: torch.Tensor, *, ks: Sequence[int],
              temperature: float = 0.07, normalizations: Sequence[str] = ("standardize",),
              val_fraction: float = 0.2, seed: int = 0, device: torch.device | str = "cpu",
              chunk_mb: float = DEFAULT_CHUNK_MB,
              progress: ProbeProgress = QUIET) -> ProbeResult:
    """Weighted cosine kNN; k and the normalisation of the features are chosen on validation.

    ``normalizations`` are tried before the cosine: ``standardize`` centres and scales
    every feature with training statistics (a low-variance feature weighs as much as
    any other), ``l2`` takes the features as they are (the usual kNN of self-supervised
    learning: cosine of the raw features). The neighbours of a query set are found once
    per normalisation for every k tried. ``progress`` advances by one unit per
    prediction: ``len(ks) * len(normalizations) + 1`` in all.
    """
    unknown = sorted(set(normalizations) - set(KNN_NORMALIZATIONS))
    if unknown or not normalizations:
        raise ValueError(f"normalizations must be some of {', '.join(KNN_NORMALIZATIONS)}, "
                         f"got {list(normalizations)}")
    found: dict[tuple[int, int, str], tuple[Rows, Rows, dict[int, torch.Tensor]]] = {}

    def fit(rows: Rows, setting: dict[str, Any]) -> Callable[[Rows], torch.Tensor]:
        def predictor(query: Rows) -> torch.Tensor:
            how = setting["normalize"]
            key = (id(rows), id(query), how)
            if key not in found:  # the rows are kept with the result, so ids stay unique
                bank, asked = ((rows, query) if how == "standardize"
                               else (_unstandardised(rows), _unstandardised(query)))
                found[key] = (rows, query, _knn_votes(bank, asked, ks, temperature, device,
                                                      progress))
            return found[key][2][setting["k"]]

        return predictor

    settings = [{"normalize": how, "k": int(k)} for how in normalizations for k in ks]
    return _select(Rows.labelled(train_x, train_y, chunk_mb),
                   Rows.labelled(test_x, test_y, chunk_mb), settings, val_fraction, seed, fit,
                   progress, lambda s: f"k={s['k']}, {s['normalize']}", units_per_fit=1)
