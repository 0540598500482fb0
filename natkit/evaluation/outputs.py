"""The files an evaluation writes into a run directory, and moving outdated ones aside."""

from __future__ import annotations

import os
from pathlib import Path

from natkit.checkpoint import RESULTS

DETAILS = "eval.json"
PLOTS = ("loss.png", "filters.png", "neighbours.png")
# Files an evaluation writes into the run directory: they describe one checkpoint.
OUTPUTS = (RESULTS, DETAILS, *PLOTS)


def stale_name(name: str) -> str:
    """Where an outdated evaluation output is moved: results.json -> results.stale.json."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.stale.{suffix}" if dot else f"{name}.stale"


def retire_outputs(run_dir: Path) -> list[tuple[str, Path]]:
    """Move the evaluation outputs of ``run_dir`` aside, as they describe an older checkpoint.

    results.json becomes results.stale.json, eval.json eval.stale.json, each plot
    ``NAME.stale.png``, replacing older stale ones. Returns ``(name, new path)``
    for each file moved.
    """
    moved = []
    for name in OUTPUTS:
        path = Path(run_dir) / name
        if path.exists():
            target = path.with_name(stale_name(name))
            os.replace(path, target)  # a move of a whole file, not a write: nothing to stage
            moved.append((name, target))
    return moved
