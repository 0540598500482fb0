"""One data loader for a whole run: workers start once and serve every epoch's batches.

A DataLoader per epoch starts and stops its worker processes every epoch
(seconds each time, with a dataset of 1.28M paths to fork). Here the loader,
its workers and their pinned-memory thread live for the run; each epoch
hands the batch sampler its rows of dataset indices. Workers hand over
images as the dataset stores them (uint8 for image files and in-memory
sets), a quarter of float32's bytes through shared and pinned memory; the
engine turns them into floats on the device (:func:`natkit.transfer.to_float`).
Training on the CPU, the workers make the floats themselves, in parallel.

Determinism: the batches are the engine's seeded rows, in order, however many
workers; the workers' base seed comes from the generator given here, never
from the global torch RNG (which dropout uses). natkit's datasets draw no
random numbers in workers: augmentations run on the device, from the
checkpointed generator, so a resume is bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from natkit.transfer import to_float

Item = tuple[Any, int, int]


class _RawItems(Dataset):
    """The dataset as workers read it: ``(raw image, index, label)``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        raw_item = getattr(self.dataset, "raw_item", None)
        image = raw_item(index) if raw_item is not None else self.dataset[index][0]
        return image, index, int(self.dataset.labels[index])


class _Collate:
    """Stack a batch in the worker (a class, not a lambda, so it pickles under spawn too)."""

    def __init__(self, dataset: Any, make_float: bool) -> None:
        self.dataset = dataset
        self.make_float = make_float

    def __call__(self, items: Sequence[Item]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        images = [image for image, _, _ in items]
        collate = getattr(self.dataset, "collate_raw", None)
        stacked = collate(images) if collate is not None else torch.stack(images)
        if self.make_float and isinstance(stacked, torch.Tensor):
            stacked = to_float(stacked)
        return (stacked, torch.tensor([i for _, i, _ in items], dtype=torch.int64),
                torch.tensor([label for _, _, label in items], dtype=torch.int64))


class _EpochBatches(Sampler[list[int]]):
    """A batch sampler whose rows are replaced before each pass."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class BatchLoader:
    """Batches ``(images, indices, labels)`` of a dataset, with ``num_workers`` persistent workers.

    ``images`` are uint8 or float as the dataset stores them (workers training for
    the CPU make them float), on the CPU, or on ``device`` when the dataset decodes
    there (``decode_raw``, e.g. GPU JPEG decoding): pass them through
    :func:`natkit.transfer.to_float` on the device.
    """

    def __init__(self, dataset: Any, num_workers: int, generator: torch.Generator,
                 device: torch.device | None = None, workers_make_float: bool | None = None,
                 ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.device = device if device is not None else torch.device("cpu")
        if workers_make_float is None:
            # training on the CPU: the workers make the floats, in parallel; on CUDA the
            # device does, after a copy of a quarter of the bytes
            workers_make_float = self.device.type == "cpu"
        self._sampler = _EpochBatches()
        self._loader: DataLoader | None = None
        if num_workers > 0:
            self._loader = DataLoader(
                _RawItems(dataset), batch_sampler=self._sampler, num_workers=num_workers,
                collate_fn=_Collate(dataset, workers_make_float),
                persistent_workers=True,
                pin_memory=self.device.type == "cuda", generator=generator)

    def epoch(self, batches: torch.Tensor) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
        """Yield each row of ``batches`` (dataset indices) as a batch, in order."""
        decode = getattr(self.dataset, "decode_raw", None)
        if self._loader is None:
            raw_batch = getattr(self.dataset, "raw_batch", self.dataset.get_batch)
            for idx in batches:
                raw = raw_batch(idx)
                yield (decode(raw, self.device) if decode else raw), idx, self.dataset.labels[idx]
            return
        self._sampler.rows = batches.tolist()
        for raw, idx, labels in self._loader:  # the same workers, every epoch
            yield (decode(raw, self.device) if decode else raw), idx, labels

    def close(self) -> None:
        """Stop the workers (they stop anyway when the loader is garbage-collected)."""
        if self._loader is not None:
            iterator = self._loader._iterator
            self._loader._iterator = None
            if iterator is not None:
                iterator._shutdown_workers()
            self._loader = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
