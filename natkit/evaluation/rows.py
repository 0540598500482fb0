"""Labelled rows of a feature source, read in bounded chunks and standardised as they are read.

Features come from a source (a tensor, or a float16 store on disk) and are read
in chunks of at most ``chunk_mb`` MiB of float32: no probe holds all features,
or a standardised copy of them, at once. Data that fits in one chunk is read
once and kept, so a probe computes exactly what it would on an in-memory tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from natkit.evaluation.store import FeatureSource, as_source, moments

DEFAULT_CHUNK_MB = 256.0  # float32 features a probe holds at once (eval.chunk_mb)


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

    def unstandardised(self) -> Rows:
        """The same rows read as stored, without standardisation."""
        return Rows(self.source, self.index, self.labels, self.chunk)

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
