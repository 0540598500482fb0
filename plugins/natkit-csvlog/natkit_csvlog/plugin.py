"""The natkit entry point of natkit-csvlog: lifecycle hooks that keep RUN_DIR/reassignment.csv.

One row per epoch that reassigned targets, written when the epoch ends:

- ``epoch``: the 0-based epoch, as in metrics.jsonl;
- ``batches``: the batches reassigned in it (by this process; see below);
- ``changed``: the mean over those batches of the fraction of targets that changed;
- ``cost_before`` / ``cost_after``: the mean over those batches of the batch's summed
  assignment cost ``-<f, c>`` before and after the solve;
- ``loss``: the epoch's mean training loss (natkit's epoch summary).

A resumed run keeps the rows of the epochs its checkpoint completed and drops later ones,
which it writes again. A run resumed in the middle of an epoch (after Ctrl-C) logs only the
batches after the resume for that epoch, as natkit's own epoch record in metrics.jsonl does.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import natkit
from natkit_csvlog.table import FILENAME, read_rows, write_rows


@dataclass
class _EpochSums:
    """What the batches of one epoch reported, summed."""

    epoch: int
    batches: int = 0
    changed: float = 0.0
    cost_before: float = 0.0
    cost_after: float = 0.0


# Per run, so that several runs in one process (tests, notebooks) never mix their sums; weak
# keys, so a finished run's sums go away with it.
_sums: weakref.WeakKeyDictionary[Any, _EpochSums] = weakref.WeakKeyDictionary()


@natkit.hookimpl
def on_run_start(run: Any) -> None:
    """Start a run's log: keep only the rows of epochs its checkpoint has completed."""
    _sums.pop(run, None)
    if getattr(run.method, "assignment", None) is None:
        return  # not NAT's per-batch assignment (supervised, SeLa): no file
    path = run.dir / FILENAME
    # rows of epochs >= run.epoch were written after the checkpoint the run resumes from;
    # the resumed run trains those epochs again and writes them afresh
    write_rows(path, [row for row in read_rows(path) if int(row["epoch"]) < run.epoch])


@natkit.hookimpl
def on_reassign(run: Any, metrics: dict[str, Any]) -> None:
    """Add one reassigned batch to its epoch's sums."""
    if "cost_before" not in metrics:
        return  # not a batch's assignment (another method's reassignment): not this table's
    sums = _sums.get(run)
    if sums is None or sums.epoch != metrics["epoch"]:
        sums = _sums[run] = _EpochSums(int(metrics["epoch"]))
    sums.batches += 1
    sums.changed += float(metrics["changed"])
    sums.cost_before += float(metrics["cost_before"])
    sums.cost_after += float(metrics["cost_after"])


@natkit.hookimpl
def on_epoch_end(run: Any, metrics: dict[str, Any]) -> None:
    """Write the finished epoch's row, if it reassigned any batch."""
    sums = _sums.pop(run, None)
    epoch = int(metrics["epoch"])
    if sums is None or sums.epoch != epoch or sums.batches == 0:
        return
    n = sums.batches
    row = {"epoch": epoch, "batches": n, "changed": sums.changed / n,
           "cost_before": sums.cost_before / n, "cost_after": sums.cost_after / n,
           "loss": float(metrics["loss"])}
    path = run.dir / FILENAME
    # rewriting the whole (small) file keeps every version of it complete on disk
    write_rows(path, [r for r in read_rows(path) if int(r["epoch"]) < epoch] + [row])
