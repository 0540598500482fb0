"""An epoch's running totals, and the metrics.jsonl records made from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from natkit.distributed import Comm


@dataclass
class EpochTally:
    """The current epoch's loss (summed on the device, read once at the end) and reassignments.

    A checkpoint taken mid-epoch saves it (:meth:`saved`), so that the epoch's
    record, once the run resumes, covers all its batches.
    """

    loss: torch.Tensor
    changed: float = 0.0  # summed over the reassignments that report a share changed
    reassigned: int = 0
    method: dict[str, float] = field(default_factory=dict)  # what start_epoch reported
    started: float = field(default_factory=time.perf_counter)
    batches_here: int = 0  # batches this process trained (not those before a resume)

    @classmethod
    def fresh(cls, device: torch.device, loss: float = 0.0, changed: float = 0.0,
              reassigned: int = 0, method: dict[str, float] | None = None) -> EpochTally:
        """A new tally, or one carried over from a checkpoint's ``epoch_sums``."""
        return cls(torch.tensor(loss, device=device), changed, reassigned, dict(method or {}))

    def restart_clock(self) -> None:
        """Time the epoch from now (its batches, not the preparation before them)."""
        self.started = time.perf_counter()

    def count(self, stats: dict[str, float]) -> None:
        """Add one reassignment's statistics."""
        if "changed" in stats:
            self.changed += stats["changed"]
            self.reassigned += 1

    def saved(self, comm: Comm) -> dict[str, Any]:
        """The totals as plain data for a checkpoint (the loss averaged over the ranks)."""
        return {"loss": float(comm.mean(self.loss, "averaging the epoch's loss")),
                "changed": self.changed, "reassigned": self.reassigned, "method": self.method}

    def summary(self, comm: Comm, *, epoch: int, step: int, batches: int, batch_size: int,
                lr: float) -> dict[str, Any]:
        """The epoch's metrics.jsonl record; its mean loss is one host synchronisation."""
        # read the loss first: it waits for the device's queued work, which the epoch's time
        # must include
        loss = float(comm.mean(self.loss, "averaging the epoch's loss")) / max(batches, 1)
        seconds = time.perf_counter() - self.started
        record = {
            "kind": "epoch", "epoch": epoch, "step": step,
            "loss": loss,
            "changed": self.changed / self.reassigned if self.reassigned else None,
            "lr": lr, "seconds": seconds,
            "images_per_s": self.batches_here * batch_size / max(seconds, 1e-9),
            "world_size": comm.world_size,
        }
        if self.method:  # all of start_epoch's statistics, not only the share changed
            record["method"] = self.method
        return record


class Throughput:
    """Images a second over the steps since the last record."""

    def __init__(self) -> None:
        self.start, self.images = time.perf_counter(), 0

    def add(self, images: int) -> None:
        """Count a batch."""
        self.images += images

    def take(self) -> float:
        """Images a second since the last call, and start a new window."""
        now = time.perf_counter()
        speed = self.images / max(now - self.start, 1e-9)
        self.start, self.images = now, 0
        return speed
