"""Run a table's grid over seeds with natkit's own engine and evaluation.

Each run lives in ``runs/<hash of its resolved config>/``, so a setting shared
by several tables (the base recipe appears in four) is trained once per seed,
and an interrupted benchmark picks up where it stopped: finished runs are read
back from their record (:mod:`benchmarks.records`), a run with a checkpoint is
resumed. A record measured under an older evaluation protocol is measured again,
without retraining. A table of evaluation settings (``Table.reevaluate``, the
per-layer probe) re-evaluates the base recipe's checkpoints; its records lie in
the run's ``reevaluated/`` folder. A table that chooses a training option per
setting first trains each candidate on validation data (:mod:`benchmarks.choices`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.records import (
    RECORD,
    REEVALUATED,
    Chosen,
    Measurement,
    code_fingerprint,
    read_record,
    write_record,
)
from benchmarks.tables import SCALES, SUPERVISED, Table
from benchmarks.timing import stopwatch, timed
from natkit import builders, lifecycle
from natkit import config as cfg
from natkit.checkpoint import CHECKPOINT, load_checkpoint
from natkit.evaluation.protocol import evaluate
from natkit.evaluation.snapshots import evaluate_snapshot


def overrides_for(table: Table, scale: str, setting_overrides: tuple[str, ...], seed: int,
                  extra: tuple[str, ...]) -> list[str]:
    """The override texts of one run: the scale's recipe (its supervised one for a supervised
    table), table base, setting, seed, then the user's."""
    recipe = (SUPERVISED if table.supervised else SCALES)[scale]
    return [*recipe, *table.base, *setting_overrides, f"seed={seed}", *extra]


def run_key(config: cfg.Config) -> str:
    """A short stable name for a resolved config."""
    return hashlib.sha256(cfg.dump(config).encode()).hexdigest()[:16]


def _accuracies(run_dir: Path) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    results = json.loads((run_dir / "results.json").read_text())
    details = json.loads((run_dir / "eval.json").read_text())
    return _split(results, details)


def _split(results: dict[str, dict[str, float]], details: dict[str, Any]
           ) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    trained = {probe: accs["trained"] for probe, accs in results.items()}
    baseline = {probe: accs["random_init"] for probe, accs in results.items()
                if "random_init" in accs}
    if "classifier_accuracy" in details:
        trained["classifier"] = details["classifier_accuracy"]
    return trained, baseline, details


def _train(config: cfg.Config, run_dir: Path, quiet: Console) -> None:
    """Train (or resume, or read back) and evaluate one run through natkit's own run owner,
    so that a benchmark run starts, resumes, evaluates and fires its hooks as `natkit run` does."""
    run = lifecycle.open_run(config, run_dir, console=quiet)
    if not lifecycle.execute(run, console=quiet, progress=quiet).finished:
        raise KeyboardInterrupt


def measure(table: Table, label: str, setting_overrides: tuple[str, ...], scale: str, seed: int,
            extra: tuple[str, ...], runs: Path) -> Measurement:
    """Train and evaluate one setting at one seed (or read the finished run back).

    A record of an older protocol is measured again: the finished run is not retrained,
    only evaluated, and the record keeps the seconds it first cost (training included).
    """
    if table.reevaluate:
        return _reevaluate(table, label, setting_overrides, scale, seed, extra, runs)
    config = cfg.build(overrides=overrides_for(table, scale, setting_overrides, seed, extra))
    run_dir = runs / run_key(config)
    record = run_dir / RECORD
    found, first_cost, trained_by = read_record(record, label)
    if found is not None:
        return found
    quiet = Console(quiet=True)
    elapsed = stopwatch()
    curve: dict[int, dict[str, float]] = {}
    if table.curve_epochs:
        # train.epochs caps the curve (a smoke test stops after one epoch) and ends it
        last = config.train.epochs
        stops = tuple(sorted({e for e in table.curve_epochs if e < last} | {last}))
        curve = _measure_curve(config, run_dir, stops, quiet)
    else:
        _train(config, run_dir, quiet)
    trained, baseline, _ = _accuracies(run_dir)
    result = Measurement(label, seed, trained, baseline, first_cost or elapsed(), str(run_dir),
                         curve, trained_by)
    write_record(record, result)
    return result


def _reevaluate(table: Table, label: str, setting_overrides: tuple[str, ...], scale: str,
                seed: int, extra: tuple[str, ...], runs: Path) -> Measurement:
    """Evaluate the base recipe's run of ``seed`` (trained first if need be) with the
    setting's evaluation overrides; ``seconds`` is the evaluation's alone."""
    base = measure(replace(table, settings=(), reevaluate=False), label, (), scale, seed, extra,
                   runs)
    run_dir = Path(base.run_dir)
    config = cfg.build(overrides=overrides_for(table, scale, setting_overrides, seed, extra))
    trained_with = builders.read_run_config(run_dir)
    changed = [k for k in cfg.difference(trained_with.to_dict(), config.to_dict())
               if not k.startswith("eval.")]
    if changed:
        raise ValueError(f"table '{table.key}', setting '{label}': a re-evaluation may only "
                         f"change eval.*, not {changed[0]}")
    record = run_dir / REEVALUATED / f"{run_key(config)}.json"
    found, _, _ = read_record(record, label)
    if found is not None:
        return found
    seconds, out = timed(lambda: evaluate(replace(trained_with, eval=config.eval),
                                          load_checkpoint(run_dir / CHECKPOINT)["model"],
                                          console=Console(quiet=True)))
    trained, baseline, _ = _split(out["results"], out["details"])
    result = Measurement(label, seed, trained, baseline, seconds, str(record.with_suffix("")),
                         code=base.code)
    record.parent.mkdir(exist_ok=True)
    write_record(record, result)
    return result


def _measure_curve(config: cfg.Config, run_dir: Path, epochs: tuple[int, ...],
                   quiet: Console) -> dict[int, dict[str, float]]:
    """Train once keeping a snapshot per epoch, then probe the snapshots; epoch 0 is the baseline.

    The last epoch is the run's own evaluation (results.json, with the random init).
    """
    kept = cfg.resolve(cfg.merge(config.to_dict(), {"train": {"keep_every": 1}}))
    _train(kept, run_dir, quiet)  # evaluates the last epoch into results.json
    curve: dict[int, dict[str, float]] = {}
    *earlier, last = sorted(epochs)
    _, _, details = _accuracies(run_dir)
    for probe, accs in details["probes"].items():
        curve.setdefault(last, {}).update(_train_test(probe, accs["trained"]))
        if "random_init" in accs:
            curve.setdefault(0, {}).update(_train_test(probe, accs["random_init"]))
    for stop in earlier:
        out = evaluate_snapshot(run_dir, stop, baseline=False, console=quiet)
        for probe, accs in out["details"]["probes"].items():
            curve.setdefault(stop, {}).update(_train_test(probe, accs["trained"]))
    return dict(sorted(curve.items()))


def _train_test(probe: str, result: dict[str, Any]) -> dict[str, float]:
    return {f"{probe}_train": result["train_accuracy"], f"{probe}_test": result["accuracy"]}


def run_table(table: Table, scale: str, seeds: int, extra: tuple[str, ...], runs: Path,
              console: Console, chosen: dict[str, Chosen] | None = None) -> list[Measurement]:
    """Every setting of ``table`` at seeds 0..seeds-1, printing a line per run; a setting in
    ``chosen`` trains with its chosen value."""
    chosen = chosen or {}
    out = []
    for seed in range(seeds):
        for setting in table.settings:
            overrides = setting.overrides
            if setting.label in chosen:
                overrides = (*overrides, chosen[setting.label].override)
            m = measure(table, setting.label, overrides, scale, seed, extra, runs)
            shown = "  ".join(f"{k} {100 * v:.1f}%" for k, v in m.trained.items())
            stale = ("" if m.code == code_fingerprint() else
                     f"  [trained by other code: {m.code or 'not recorded'}]")
            console.print(f"[{table.key}] {setting.label:<12} seed {seed}: {shown}  "
                          f"({m.seconds:.0f} s){stale}", highlight=False, markup=False,
                          soft_wrap=True)
            out.append(m)
    return out
