"""Evaluating the snapshots a run kept (``train.keep_every``): one epoch, or the whole curve.

A snapshot's evaluation is written beside it (``snapshots/epoch-0010.json``), never
over results.json, which describes checkpoint.pt. The curve probes the random
init once (it is the same network for every epoch) and each snapshot's trained
network, and writes ``curve.json`` and ``curve.png`` into the run directory.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from natkit import files
from natkit.builders import read_run_config
from natkit.checkpoint import (
    CHECKPOINT,
    SNAPSHOTS,
    load_checkpoint,
    snapshot_epochs,
    snapshot_path,
)
from natkit.errors import CheckpointError
from natkit.evaluation.checks import require_finite
from natkit.evaluation.plots import plot_curve
from natkit.evaluation.protocol import evaluate
from natkit.evaluation.tables import curve_table, results_table

CURVE = "curve.json"
CURVE_PLOT = "curve.png"


def available_epochs(run_dir: Path) -> list[int]:
    """Every epoch that can be evaluated: the snapshots, and checkpoint.pt's epoch."""
    epochs = set(snapshot_epochs(run_dir))
    if (Path(run_dir) / CHECKPOINT).exists():
        epochs.add(int(load_checkpoint(Path(run_dir) / CHECKPOINT, lazy=True)["epoch"]))
    return sorted(epochs)


def _checkpoint_of(run_dir: Path, epoch: int) -> Path:
    """The file holding the network after ``epoch``: its snapshot, else checkpoint.pt if it is that epoch."""
    path = snapshot_path(run_dir, epoch)
    if path.exists():
        return path
    latest = run_dir / CHECKPOINT
    if latest.exists() and int(load_checkpoint(latest, lazy=True)["epoch"]) == epoch:
        return latest
    kept = available_epochs(run_dir)
    raise CheckpointError(
        f"--checkpoint: run '{run_dir}' holds no checkpoint of epoch {epoch}; "
        + (f"valid: {', '.join(map(str, kept))}" if kept else
           "it has none yet (train it first; keep snapshots with --set train.keep_every=K)"))


def result_path(run_dir: Path, epoch: int) -> Path:
    """Where the evaluation of the snapshot of ``epoch`` is written."""
    return Path(run_dir) / SNAPSHOTS / f"epoch-{epoch:04d}.json"


def _evaluate_epoch(run_dir: Path, epoch: int, *, baseline: bool,
                    progress: Console) -> dict[str, Any]:
    config = read_run_config(run_dir)
    if not baseline:
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, baseline=False))
    path = _checkpoint_of(run_dir, epoch)
    state = load_checkpoint(path)
    require_finite(state["model"], path, "evaluated")
    out = evaluate(config, state["model"], console=progress, checkpoint=path)
    out["details"].update(epochs_trained=int(state["epoch"]), step=int(state.get("step", 0)),
                          checkpoint=str(path.relative_to(run_dir)))
    target = result_path(run_dir, epoch)
    target.parent.mkdir(exist_ok=True)
    files.write_json(target, out)
    return out


def evaluate_snapshot(run_dir: Path, epoch: int, *, baseline: bool = True,
                      console: Console | None = None,
                      progress: Console | None = None) -> dict[str, Any]:
    """Evaluate the network after ``epoch``; writes snapshots/epoch-NNNN.json and prints a table.

    ``baseline=False`` skips the random init (the same network for every epoch).
    """
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    out = _evaluate_epoch(run_dir, epoch, baseline=baseline, progress=progress or console)
    console.print(results_table(out["results"], out["details"]))
    return out


def evaluate_curve(run_dir: Path, *, console: Console | None = None,
                   progress: Console | None = None) -> dict[int, dict[str, float]]:
    """Probe every kept epoch (and the random init as epoch 0); writes curve.json and curve.png.

    Returns ``{epoch: {probe: test accuracy}}``. Snapshots already evaluated (their
    JSON is newer than the snapshot) are read back rather than probed again, so an
    interrupted curve continues where it stopped.
    """
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    epochs = available_epochs(run_dir)
    if not epochs:
        raise CheckpointError(f"'{run_dir}' holds no {CHECKPOINT} and no snapshots yet; "
                              "train it first")
    curve: dict[int, dict[str, float]] = {}
    for i, epoch in enumerate(epochs):
        done = result_path(run_dir, epoch)
        source = _checkpoint_of(run_dir, epoch)
        if done.exists() and done.stat().st_mtime >= source.stat().st_mtime:
            out = json.loads(done.read_text())
        else:
            out = _evaluate_epoch(run_dir, epoch, baseline=i == 0, progress=progress or console)
        for probe, accs in out["results"].items():
            curve.setdefault(epoch, {})[probe] = accs["trained"]
            if "random_init" in accs:
                curve.setdefault(0, {}).setdefault(probe, accs["random_init"])
    curve = dict(sorted(curve.items()))
    numbers = json.dumps({str(e): accs for e, accs in curve.items()}, indent=2) + "\n"
    drawn = io.BytesIO()
    plot_curve(curve, drawn)
    # together: curve.png always draws the numbers of curve.json
    files.write_files({run_dir / CURVE: numbers, run_dir / CURVE_PLOT: drawn.getvalue()})
    console.print(curve_table(curve))
    return curve
