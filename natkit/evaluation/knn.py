"""The weighted cosine kNN probe, and the streamed nearest-neighbour search under it.

The search never holds a query-by-bank similarity matrix: both sides are read
chunk by chunk, and a running top-k is merged over the bank's chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from natkit.evaluation.reporting import QUIET, ProbeProgress, ProbeResult
from natkit.evaluation.rows import DEFAULT_CHUNK_MB, Rows, statistics
from natkit.evaluation.selection import Predictor, select
from natkit.evaluation.store import FeatureSource, as_source

_SIMS_ELEMENTS = 1 << 22  # query-by-bank similarities the kNN holds at once (16 MiB)
_KNN_QUERIES = 1024  # query rows per similarity block
KNN_NORMALIZATIONS = ("standardize", "l2")


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

    def fit(rows: Rows, setting: dict[str, Any]) -> Predictor:
        def predictor(query: Rows) -> torch.Tensor:
            how = setting["normalize"]
            key = (id(rows), id(query), how)
            if key not in found:  # the rows are kept with the result, so ids stay unique
                bank, asked = ((rows, query) if how == "standardize"
                               else (rows.unstandardised(), query.unstandardised()))
                found[key] = (rows, query, _knn_votes(bank, asked, ks, temperature, device,
                                                      progress))
            return found[key][2][setting["k"]]

        return predictor

    settings = [{"normalize": how, "k": int(k)} for how in normalizations for k in ks]
    return select(Rows.labelled(train_x, train_y, chunk_mb),
                  Rows.labelled(test_x, test_y, chunk_mb), settings, val_fraction, seed, fit,
                  progress, lambda s: f"k={s['k']}, {s['normalize']}", units_per_fit=1)


def sample_neighbours(train: FeatureSource, test: FeatureSource, device: torch.device | str,
                      chunk_mb: float, queries: int = 8, k: int = 6,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random test images and their ``k`` nearest training images, in standardised features."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(test), generator=g)[:queries]
    everything = torch.zeros(len(train), dtype=torch.int64)  # every row, labelled or not
    bank = Rows.labelled(train, everything, chunk_mb)
    mean, std = statistics(bank)
    order = picks.sort()
    query = Rows(test, order.values.numpy(), torch.zeros(len(picks), dtype=torch.int64),
                 bank.chunk).standardised(mean, std)
    found = torch.cat([where for _, where in nearest(bank.standardised(mean, std), query, k,
                                                     device)])
    found = torch.as_tensor(bank.index)[found]  # bank positions are training indices here
    return order.values, found
