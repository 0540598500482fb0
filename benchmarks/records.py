"""What the benchmark measured, and the files it is kept in.

A run's record (``bench.json`` in its folder, a :class:`Measurement`) lets an
interrupted benchmark pick up where it stopped; a table's CSV (one row per run, seed
and metric) and its choices' CSV (:class:`Chosen`) are what ``python -m benchmarks
report`` rebuilds every table and verdict from. A record carries the evaluation
protocol it was measured under (:data:`PROTOCOL`) and the fingerprint of the code
that trained the run (:func:`code_fingerprint`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from benchmarks.tables import TABLES
from natkit import files

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
        """The chosen value as a config override."""
        return f"{self.key}={self.value}"


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


def write_record(path: Path, result: Measurement) -> None:
    """Keep ``result`` at ``path``, marked with the current :data:`PROTOCOL`."""
    files.write_json(path, {**result.__dict__, "protocol": PROTOCOL})


def read_record(path: Path, label: str) -> tuple[Measurement | None, float, str]:
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


def write_csv(measurements: list[Measurement], path: Path) -> None:
    """One row per (setting, seed, metric) with the trained and random-init accuracy."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "seed", "metric", "trained", "random_init", "epoch",
                         "seconds"])
        for m in measurements:
            if m.curve:
                for epoch, values in m.curve.items():
                    for key, value in values.items():
                        writer.writerow([m.setting, m.seed, key, f"{value:.4f}", "", epoch,
                                         f"{m.seconds:.1f}"])
                continue
            for metric, value in m.trained.items():
                base = m.random_init.get(metric)
                writer.writerow([m.setting, m.seed, metric, f"{value:.4f}",
                                 "" if base is None else f"{base:.4f}", "", f"{m.seconds:.1f}"])


def read_csv(path: Path) -> list[Measurement]:
    """The measurements of a table's CSV (as :func:`write_csv` wrote them), one per run."""
    runs: dict[tuple[str, int], Measurement] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["setting"], int(row["seed"]))
            m = runs.setdefault(key, Measurement(key[0], key[1], {}, {},
                                                 float(row["seconds"] or 0), ""))
            if row["epoch"]:
                m.curve.setdefault(int(row["epoch"]), {})[row["metric"]] = float(row["trained"])
                continue
            m.trained[row["metric"]] = float(row["trained"])
            if row["random_init"]:
                m.random_init[row["metric"]] = float(row["random_init"])
    for m in runs.values():
        m.curve = dict(sorted(m.curve.items()))
    return list(runs.values())


def read_suite(folder: Path) -> dict[str, list[Measurement]]:
    """Every table with a CSV in ``folder``, in the order of TABLES."""
    return {key: read_csv(folder / f"{key}.csv") for key in TABLES
            if (folder / f"{key}.csv").is_file()}


def write_choices(chosen: list[Chosen], validation: tuple[str, ...], path: Path) -> None:
    """One row per (setting, candidate) of a table's choice; no file when it chose nothing."""
    if not chosen:
        path.unlink(missing_ok=True)  # a scale without validation data keeps no older choice
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "key", "value", "metric", "score", "chosen", "seeds",
                         "seconds", "validation"])
        for c in chosen:
            for value, score in c.scores.items():
                writer.writerow([c.setting, c.key, value, c.metric, f"{score:.4f}",
                                 int(value == c.value), c.seeds, f"{c.seconds[value]:.1f}",
                                 " ".join(validation)])


def read_choices(path: Path) -> tuple[list[Chosen], str]:
    """The choices :func:`write_choices` wrote, and the validation data they were made on."""
    if not path.is_file():
        return [], ""
    chosen: dict[str, Chosen] = {}
    validation = ""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            c = chosen.setdefault(row["setting"], Chosen(row["setting"], row["key"], {}, "",
                                                         row["metric"], int(row["seeds"]), {}))
            c.scores[row["value"]] = float(row["score"])
            c.seconds[row["value"]] = float(row["seconds"])
            if row["chosen"] == "1":
                c.value = row["value"]
            validation = row["validation"]
    return list(chosen.values()), validation
