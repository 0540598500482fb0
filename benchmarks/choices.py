"""Training options chosen per setting on validation data, before any measured run.

A table with a :class:`~benchmarks.tables.Choice` (the supervised tables' step size)
trains each candidate value on the scale's validation data (:data:`~benchmarks.tables.VALIDATION`:
images no measured run trains or tests on) and keeps the best; the measured runs of
the setting then train with it.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from benchmarks.harness import measure, overrides_for, run_key
from benchmarks.records import DIVERGED, Chosen, Measurement, code_fingerprint, read_record, write_record
from benchmarks.tables import VALIDATION, Setting, Table
from benchmarks.timing import stopwatch
from natkit import config as cfg
from natkit.errors import ConfigError, TrainingDiverged


def _validation_eval(metric: str) -> tuple[str, ...]:
    """Evaluation overrides that measure ``metric`` alone (the validation runs need no more)."""
    probes = "[]" if metric == "classifier" else f"[{metric}]"
    return (f"eval.probes={probes}", "eval.baseline=false")


def choose(table: Table, setting: Setting, scale: str, extra: tuple[str, ...], runs: Path,
           console: Console) -> Chosen | None:
    """Pick ``table.choose``'s value for ``setting`` on the scale's validation data.

    None where the table chooses nothing, or the scale has no validation data (the recipe's
    own value stands). Ties go to the candidate listed first.
    """
    choice = table.choose
    if choice is None or scale not in VALIDATION:
        return None
    if any(o.partition("=")[0].strip() == choice.key for o in extra):
        raise ConfigError(f"--set {choice.key}: table '{table.key}' chooses {choice.key} per "
                          "setting on validation data; leave it unset")
    validation = (*VALIDATION[scale], *_validation_eval(choice.metric))
    measured = cfg.build(overrides=overrides_for(table, scale, setting.overrides, 0, extra))
    held = cfg.build(overrides=overrides_for(table, scale, setting.overrides, 0,
                                             (*extra, *validation)))
    if held.data == measured.data:
        raise ConfigError(f"table '{table.key}': its validation runs ({' '.join(VALIDATION[scale])}) "
                          "would use the measured runs' data; leave data.seed unset")
    scores: dict[str, float] = {}
    seconds: dict[str, float] = {}
    done: list[Measurement] = []
    for value in choice.values:
        override = (*setting.overrides, f"{choice.key}={value}")
        values, diverged, seconds[value] = [], 0, 0.0
        for seed in range(choice.seeds):
            m = _validation_run(replace(table, choose=None), setting.label, override, scale,
                                seed, (*extra, *validation), runs)
            seconds[value] += m.seconds
            done.append(m)
            if choice.metric in m.trained:
                values.append(m.trained[choice.metric])
            else:  # a step size too large for the setting: it scores 0
                values.append(0.0)
                diverged += 1
        scores[value] = statistics.fmean(values)
        note = f" ({diverged} of {choice.seeds} seed(s) diverged, scored 0)" if diverged else ""
        console.print(f"[{table.key}] {setting.label:<12} validation {choice.key}={value}: "
                      f"{choice.metric} {100 * scores[value]:.1f}%{note}", highlight=False,
                      markup=False, soft_wrap=True)
    best = max(choice.values, key=lambda v: scores[v])  # max keeps the first of equal scores
    return Chosen(setting.label, choice.key, scores, best, choice.metric, choice.seeds,
                  seconds, done)


def _validation_run(table: Table, label: str, overrides: tuple[str, ...], scale: str,
                    seed: int, extra: tuple[str, ...], runs: Path) -> Measurement:
    """:func:`measure`, except that a run whose loss diverges is recorded as such (what it
    cost, no accuracy) and read back, rather than retrained by every invocation."""
    config = cfg.build(overrides=overrides_for(table, scale, overrides, seed, extra))
    record = runs / run_key(config) / DIVERGED
    found, _, _ = read_record(record, label)
    if found is not None:
        return found
    elapsed = stopwatch()
    try:
        return measure(table, label, overrides, scale, seed, extra, runs)
    except TrainingDiverged:
        result = Measurement(label, seed, {}, {}, elapsed(), str(record.parent),
                             code=code_fingerprint())
        write_record(record, result)
        return result
