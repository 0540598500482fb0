"""Run a table's grid over seeds with natkit's own engine and evaluation, and summarise it.

Each run lives in ``runs/<hash of its resolved config>/``, so a setting shared
by several tables (the base recipe appears in four) is trained once per seed,
and an interrupted benchmark picks up where it stopped: finished runs are read
back, a run with a checkpoint is resumed. A record measured under an older
evaluation protocol (:data:`PROTOCOL`) is measured again, without retraining.
A table of evaluation settings (``Table.reevaluate``, the per-layer probe)
re-evaluates the base recipe's checkpoints; its records lie in the run's
``reevaluated/`` folder. A table that chooses a training option per setting
(``Table.choose``) first trains each candidate on validation data (:func:`choose`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from benchmarks.stats import Paired, decide, holm, paired
from benchmarks.tables import (
    RANDOM_INIT,
    SCALES,
    SUPERVISED,
    TABLES,
    VALIDATION,
    Claim,
    Setting,
    Table,
)
from natkit import builders, engine
from natkit import config as cfg
from natkit import files
from natkit.checkpoint import CHECKPOINT, load_checkpoint
from natkit.errors import ConfigError, TrainingDiverged
from natkit.evaluation.protocol import evaluate, evaluate_run
from natkit.evaluation.snapshots import evaluate_snapshot

RECORD = "bench.json"
DIVERGED = "diverged.json"  # a validation run whose loss diverged: what it cost, no accuracy
REEVALUATED = "reevaluated"  # <run>/reevaluated/<hash of the evaluation's config>.json
# What a record's numbers mean; bumped when the evaluation changes what it measures, so that
# older records are evaluated again. 2: the trained network's BatchNorm statistics, too, are
# recomputed on the unaugmented training images. 3: so are a supervised classifier's.
PROTOCOL = 3


@dataclass
class Measurement:
    """One (setting, seed) run: trained and random-init accuracies, and what it cost.

    ``run_dir`` is the run's folder, or for a re-evaluation of a run the record's path
    without its ``.json``.
    """

    setting: str
    seed: int
    trained: dict[str, float]
    random_init: dict[str, float]
    seconds: float
    run_dir: str
    curve: dict[int, dict[str, float]] = field(default_factory=dict)
    # code_fingerprint() of the code that trained the run ("" if not recorded)
    code: str = ""


def _record(result: Measurement) -> dict[str, Any]:
    return {**result.__dict__, "protocol": PROTOCOL}


def _read_record(path: Path, label: str) -> tuple[Measurement | None, float, str]:
    """The measurement stored at ``path`` under ``label``, if measured under :data:`PROTOCOL`;
    the seconds it first cost (0 without a record); and the fingerprint of the code that
    trained it (the current code's without a record, "" where none was recorded)."""
    if not path.exists():
        return None, 0.0, code_fingerprint()
    stored = json.loads(path.read_text())
    if stored.pop("protocol", 1) != PROTOCOL:
        return None, float(stored["seconds"]), stored.get("code", "")
    # the same run may be a row of several tables, under a different label in each;
    # JSON keeps the curve's epochs as strings, which would sort "12" before "2"
    return Measurement(**{**stored, "setting": label,
                          "curve": {int(e): v for e, v in stored["curve"].items()}}), 0.0, ""


def overrides_for(table: Table, scale: str, setting_overrides: tuple[str, ...], seed: int,
                  extra: tuple[str, ...]) -> list[str]:
    """The override texts of one run: the scale's recipe (its supervised one for a supervised
    table), table base, setting, seed, then the user's."""
    recipe = (SUPERVISED if table.supervised else SCALES)[scale]
    return [*recipe, *table.base, *setting_overrides, f"seed={seed}", *extra]


@functools.cache
def code_fingerprint() -> str:
    """A short hash of the Python source that trains and evaluates runs: natkit's package and
    the package of every loaded plugin.

    Run folders are keyed by their config alone, so a run trained by older code would be
    reused silently; records carry this fingerprint, and RESULTS.md says which code trained
    its runs.
    """
    import natkit
    from natkit.plugins import get_host

    roots = {Path(natkit.__file__).parent}
    for _, plugin in get_host().pm.list_name_plugin():
        name = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        top = sys.modules.get(name.split(".")[0])
        if getattr(top, "__file__", None):
            roots.add(Path(top.__file__).parent)
    digest = hashlib.sha256()
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


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
    """Train and evaluate one setting at one seed (or read the finished run back).

    A record of an older protocol is measured again: the finished run is not retrained,
    only evaluated, and the record keeps the seconds it first cost (training included).
    """
    if table.reevaluate:
        return _reevaluate(table, label, setting_overrides, scale, seed, extra, runs)
    config = cfg.build(overrides=overrides_for(table, scale, setting_overrides, seed, extra))
    run_dir = runs / run_key(config)
    record = run_dir / RECORD
    found, first_cost, trained_by = _read_record(record, label)
    if found is not None:
        return found
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
    result = Measurement(label, seed, trained, baseline,
                         first_cost or time.perf_counter() - started, str(run_dir), curve,
                         trained_by)
    files.write_json(record, _record(result))
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
    found, _, _ = _read_record(record, label)
    if found is not None:
        return found
    started = time.perf_counter()
    state = load_checkpoint(run_dir / CHECKPOINT)
    out = evaluate(replace(trained_with, eval=config.eval), state["model"],
                   console=Console(quiet=True))
    trained, baseline, _ = _split(out["results"], out["details"])
    result = Measurement(label, seed, trained, baseline, time.perf_counter() - started,
                         str(record.with_suffix("")), code=base.code)
    record.parent.mkdir(exist_ok=True)
    files.write_json(record, _record(result))
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


@dataclass
class Chosen:
    """A setting's choice (``Table.choose``): each candidate's validation score, and the pick."""

    setting: str
    key: str
    scores: dict[str, float]  # candidate value -> mean of the metric over the validation seeds
    value: str
    metric: str
    seeds: int
    seconds: dict[str, float]  # candidate value -> what its validation runs cost
    runs: list[Measurement] = field(default_factory=list)  # the validation runs (cost, code)

    @property
    def override(self) -> str:
        return f"{self.key}={self.value}"


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
    found, _, _ = _read_record(record, label)
    if found is not None:
        return found
    started = time.perf_counter()
    try:
        return measure(table, label, overrides, scale, seed, extra, runs)
    except TrainingDiverged:
        result = Measurement(label, seed, {}, {}, time.perf_counter() - started,
                             str(record.parent), code=code_fingerprint())
        files.write_json(record, _record(result))
        return result


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


@dataclass(frozen=True)
class Finding:
    """One claim checked on one probe: the paired test, its Holm-adjusted p-values, the verdict.

    ``verdict`` is about a - b ("better", "worse", "on par", "too few seeds to tell" or
    "not measured"); :attr:`against_paper` says what it means for the paper's claim.
    """

    table: str
    claim: Claim
    metric: str
    test: Paired | None
    p_holm: float = math.nan
    p_equivalent_holm: float = math.nan
    verdict: str = "not measured"

    @property
    def against_paper(self) -> str:
        if self.verdict in ("not measured", "too few seeds to tell"):
            return "not shown"
        if self.claim.kind == "on_par":
            return "reproduced" if self.verdict == "on par" else "not reproduced: they differ"
        return {"better": "reproduced", "worse": "contradicted"}.get(
            self.verdict, "not reproduced: on par")


def claim_values(table: Table, claim: Claim, metric: str, measurements: list[Measurement]
                 ) -> tuple[list[int], list[float], list[float]]:
    """The seeds both sides of ``claim`` were measured on, and each side's value per seed."""
    def value(m: Measurement, label: str) -> float | None:
        if table.curve_epochs:
            epochs = sorted(m.curve)
            epoch = epochs[-1] if label == "last" and epochs else int(label)
            return m.curve.get(epoch, {}).get(metric)
        if label == RANDOM_INIT:
            return m.random_init.get(metric)
        if metric not in m.trained:
            return None
        if claim.effect:
            base = m.random_init.get(metric)
            return None if base is None else m.trained[metric] - base
        return m.trained[metric]

    def side(label: str) -> dict[int, float]:
        setting = claim.a if label == RANDOM_INIT else label
        out = {}
        for m in measurements:  # a curve table has one setting, its claims compare epochs
            if (table.curve_epochs or m.setting == setting) and (v := value(m, label)) is not None:
                out[m.seed] = v
        return out

    a, b = side(claim.a), side(claim.b)
    seeds = sorted(set(a) & set(b))
    return seeds, [a[s] for s in seeds], [b[s] for s in seeds]


def assess(suite: dict[str, list[Measurement]]) -> list[Finding]:
    """Every claim of the measured tables on every probe, Holm-adjusted across the suite.

    Each comparison contributes its difference test and its equivalence test; the two
    cannot both have a true null hypothesis, so they count as one comparison in the
    adjustment (:func:`benchmarks.stats.holm`).
    """
    findings: list[Finding] = []
    for key, measurements in suite.items():
        table = TABLES[key]
        measured = ({k for m in measurements for e in m.curve.values() for k in e}
                    | {k for m in measurements for k in m.trained})
        for claim in table.claims:
            for metric in claim.metrics:
                if metric not in measured:
                    continue
                seeds, a, b = claim_values(table, claim, metric, measurements)
                findings.append(Finding(key, claim, metric, paired(a, b) if seeds else None))
    tested = [i for i, f in enumerate(findings) if f.test is not None and f.test.n > 1]
    pvalues = [p for i in tested for p in (findings[i].test.p, findings[i].test.p_equivalent)]
    adjusted = holm(pvalues, [i for i in tested for _ in range(2)])
    out = list(findings)
    for j, i in enumerate(tested):
        f = findings[i]
        p, p_eq = adjusted[2 * j], adjusted[2 * j + 1]
        out[i] = replace(f, p_holm=p, p_equivalent_holm=p_eq, verdict=decide(f.test, p, p_eq))
    for i, f in enumerate(out):
        if f.test is not None and f.test.n < 2:
            out[i] = replace(f, verdict="too few seeds to tell")
    return out


def curve_summary(measurements: list[Measurement]) -> dict[int, dict[str, Stat]]:
    """Per epoch, the statistics of each curve value over seeds."""
    epochs = sorted({e for m in measurements for e in m.curve})
    out: dict[int, dict[str, Stat]] = {}
    for e in epochs:
        keys = sorted({k for m in measurements for k in m.curve.get(e, {})})
        out[e] = {k: Stat.of([m.curve[e][k] for m in measurements if e in m.curve]) for k in keys}
    return out


def curve_verdict(summary: dict[int, dict[str, Stat]], key: str = "linear_test") -> str:
    """The curve's shape, described from the means (saturation is not tested: the growth
    itself is a claim of the table, checked paired by seed like the others)."""
    epochs = [e for e in summary if key in summary[e]]
    if len(epochs) < 3:
        return "not measured"
    first, last = summary[epochs[0]][key], summary[epochs[-1]][key]
    mid = epochs[len(epochs) // 2]
    early = summary[mid][key].mean - first.mean
    late = last.mean - summary[mid][key].mean
    span = (f"epoch {epochs[0]} {first}% -> epoch {mid} {summary[mid][key]}% -> "
            f"epoch {epochs[-1]} {last}%")
    gains = (f"{100 * early:+.1f} points over epochs {epochs[0]}-{mid}, {100 * late:+.1f} over "
             f"{mid}-{epochs[-1]}")
    if late <= 0 < early:
        shape = "flat or falling in the later epochs"
    elif late < early:
        shape = "gains less in the later epochs"
    else:
        shape = "still rising at the last epoch, no saturation in sight"
    return f"{shape} ({gains}; means, not tested: {span})"
