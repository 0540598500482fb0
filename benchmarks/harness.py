"""Run a table's grid over seeds with natkit's own engine and evaluation, and summarise it.

Each run lives in ``runs/<hash of its resolved config>/``, so a setting shared
by several tables (the base recipe appears in four) is trained once per seed,
and an interrupted benchmark picks up where it stopped: finished runs are read
back, a run with a checkpoint is resumed.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.tables import SCALES, Claim, Table
from natkit import builders, engine
from natkit import config as cfg
from natkit.checkpoint import CHECKPOINT, atomic_write_json
from natkit.evaluation.protocol import evaluate_run
from natkit.evaluation.snapshots import evaluate_snapshot

RECORD = "bench.json"
# two standard errors wider than this (3 points) cannot call two settings on par
ON_PAR_RESOLUTION = 0.03


@dataclass
class Measurement:
    """One (setting, seed) run: trained and random-init accuracies, and what it cost."""

    setting: str
    seed: int
    trained: dict[str, float]
    random_init: dict[str, float]
    seconds: float
    run_dir: str
    curve: dict[int, dict[str, float]] = field(default_factory=dict)


def overrides_for(table: Table, scale: str, setting_overrides: tuple[str, ...], seed: int,
                  extra: tuple[str, ...]) -> list[str]:
    """The override texts of one run: scale, table base, setting, seed, then the user's."""
    return [*SCALES[scale], *table.base, *setting_overrides, f"seed={seed}", *extra]


def run_key(config: cfg.Config) -> str:
    """A short stable name for a resolved config."""
    return hashlib.sha256(cfg.dump(config).encode()).hexdigest()[:16]


def _accuracies(run_dir: Path) -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    results = json.loads((run_dir / "results.json").read_text())
    details = json.loads((run_dir / "eval.json").read_text())
    trained = {probe: accs["trained"] for probe, accs in results.items()}
    baseline = {probe: accs["random_init"] for probe, accs in results.items()
                if "random_init" in accs}
    if "classifier_accuracy" in details:
        trained["classifier"] = details["classifier_accuracy"]
    return trained, baseline, details


def _train(config: cfg.Config, run_dir: Path, quiet: Console) -> None:
    if (run_dir / CHECKPOINT).exists():
        changes = config if cfg.difference(builders.read_run_config(run_dir).to_dict(),
                                            config.to_dict()) else None
        run = engine.resume(run_dir, changes, console=quiet)
    else:
        run = engine.start(config, run_dir, console=quiet)
    if not run.train():
        raise KeyboardInterrupt


def measure(table: Table, label: str, setting_overrides: tuple[str, ...], scale: str, seed: int,
            extra: tuple[str, ...], runs: Path) -> Measurement:
    """Train and evaluate one setting at one seed (or read the finished run back)."""
    config = cfg.build(overrides=overrides_for(table, scale, setting_overrides, seed, extra))
    run_dir = runs / run_key(config)
    record = run_dir / RECORD
    if record.exists():
        stored = json.loads(record.read_text())
        # the same run may be a row of several tables, under a different label in each;
        # JSON keeps the curve's epochs as strings, which would sort "12" before "2"
        return Measurement(**{**stored, "setting": label,
                              "curve": {int(e): v for e, v in stored["curve"].items()}})
    quiet = Console(quiet=True)
    started = time.perf_counter()
    curve: dict[int, dict[str, float]] = {}
    if table.curve_epochs:
        # train.epochs caps the curve (a smoke test stops after one epoch) and ends it
        last = config.train.epochs
        stops = tuple(sorted({e for e in table.curve_epochs if e < last} | {last}))
        curve = _measure_curve(config, run_dir, stops, quiet)
    else:
        _train(config, run_dir, quiet)
        evaluate_run(run_dir, console=quiet)
    trained, baseline, _ = _accuracies(run_dir)
    result = Measurement(label, seed, trained, baseline, time.perf_counter() - started,
                         str(run_dir), curve)
    atomic_write_json(record, result.__dict__)
    return result


def _measure_curve(config: cfg.Config, run_dir: Path, epochs: tuple[int, ...],
                   quiet: Console) -> dict[int, dict[str, float]]:
    """Train once keeping a snapshot per epoch, then probe the snapshots; epoch 0 is the baseline.

    The last epoch is the run's own evaluation (results.json, with the random init).
    """
    kept = cfg.resolve(cfg.merge(config.to_dict(), {"train": {"keep_every": 1}}))
    _train(kept, run_dir, quiet)
    curve: dict[int, dict[str, float]] = {}
    *earlier, last = sorted(epochs)
    evaluate_run(run_dir, console=quiet)
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
              console: Console) -> list[Measurement]:
    """Every setting of ``table`` at seeds 0..seeds-1, printing a line per run."""
    out = []
    for seed in range(seeds):
        for setting in table.settings:
            m = measure(table, setting.label, setting.overrides, scale, seed, extra, runs)
            shown = "  ".join(f"{k} {100 * v:.1f}%" for k, v in m.trained.items())
            console.print(f"[{table.key}] {setting.label:<12} seed {seed}: {shown}  "
                          f"({m.seconds:.0f} s)", highlight=False)
            out.append(m)
    return out


# ---------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and count of a metric over seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else
                   0.0, len(values))

    def __str__(self) -> str:
        if self.n > 1:
            return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"
        return f"{100 * self.mean:.1f}"


def summarise(measurements: list[Measurement], metric: str, which: str = "trained"
              ) -> dict[str, Stat]:
    """Per setting, the statistics of ``metric`` over seeds."""
    values: dict[str, list[float]] = {}
    for m in measurements:
        source = m.trained if which == "trained" else m.random_init
        if metric in source:
            values.setdefault(m.setting, []).append(source[metric])
    return {label: Stat.of(v) for label, v in values.items()}


def per_seed(measurements: list[Measurement], label: str, metric: str) -> list[float]:
    """The values of ``metric`` for one setting, one per seed."""
    return [m.trained[metric] for m in measurements if m.setting == label and metric in m.trained]


def verdict(claim: Claim, measurements: list[Measurement]) -> str:
    """Whether the measurements show the paper's claim, by a two-standard-error rule."""
    a, b = per_seed(measurements, claim.a, claim.metric), per_seed(measurements, claim.b,
                                                                    claim.metric)
    if not a or not b:
        return "not measured"
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return f"one seed only: difference {100 * diff:+.1f} points, no error bar"
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    shown = f"{claim.a} - {claim.b} = {100 * diff:+.1f} ± {100 * se:.1f} points"
    if claim.kind == "greater":
        if diff > 2 * se and diff > 0:
            return f"reproduced ({shown})"
        if diff < -2 * se:
            return f"contradicted ({shown})"
        return f"not shown at this scale: within noise ({shown})"
    if abs(diff) > max(2 * se, 0.01):
        return f"not reproduced: they differ ({shown})"
    # "no difference" means something only when a real one could have been seen
    if 2 * se > ON_PAR_RESOLUTION:
        return f"not shown at this scale: too noisy to tell ({shown})"
    return f"reproduced: on par ({shown})"


def curve_summary(measurements: list[Measurement]) -> dict[int, dict[str, Stat]]:
    """Per epoch, the statistics of each curve value over seeds."""
    epochs = sorted({e for m in measurements for e in m.curve})
    out: dict[int, dict[str, Stat]] = {}
    for e in epochs:
        keys = sorted({k for m in measurements for k in m.curve.get(e, {})})
        out[e] = {k: Stat.of([m.curve[e][k] for m in measurements if e in m.curve]) for k in keys}
    return out


def curve_verdict(summary: dict[int, dict[str, Stat]], key: str = "linear_test") -> str:
    """Whether accuracy grows with epochs, then saturates (the paper's figure)."""
    epochs = [e for e in summary if key in summary[e]]
    if len(epochs) < 3:
        return "not measured"
    first, last = summary[epochs[0]][key], summary[epochs[-1]][key]
    mid = epochs[len(epochs) // 2]
    early = summary[mid][key].mean - first.mean
    late = last.mean - summary[mid][key].mean
    grows = last.mean - first.mean
    span = (f"epoch {epochs[0]} {first}% -> epoch {mid} {summary[mid][key]}% -> "
            f"epoch {epochs[-1]} {last}%")
    if grows <= 0:
        return f"not reproduced: no growth ({span})"
    if late < early:
        return f"reproduced: grows, and gains less in the later epochs ({span})"
    return f"grows but does not saturate yet ({span})"
