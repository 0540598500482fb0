"""csvlog in real natkit runs: one row per reassigning epoch, consistent with metrics.jsonl."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from natkit_csvlog.table import COLUMNS, FILENAME


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return [{k: float(v) for k, v in row.items()} for row in reader]


def epoch_records(run_dir: Path) -> dict[int, dict]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return {r["epoch"]: r for r in records if r["kind"] == "epoch"}


def test_a_fresh_natkit_process_finds_the_plugin(natkit_process):
    result = natkit_process("plugins")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "natkit-csvlog" in line]
    assert len(rows) == 1 and " ok " in rows[0] and "0.1.0" in rows[0], result.stdout


def test_every_epoch_of_a_run_reassigning_every_epoch_gets_a_row(natkit_cli, tiny_sets, tmp_path):
    out = tmp_path / "run"
    result = natkit_cli("run", "--no-eval", "--out", str(out), *tiny_sets("method.permute_every=1"))
    assert result.exit_code == 0, result.stderr
    rows = read_csv(out / FILENAME)
    assert [row["epoch"] for row in rows] == [0, 1]
    records = epoch_records(out)
    batch_size = 16
    for row in rows:
        assert row["batches"] == 64 // batch_size  # every batch of the epoch reassigned
        assert 0.0 <= row["changed"] <= 1.0
        # unit features and targets: a batch's summed cost -<f, c> lies in [-b, b]
        assert -batch_size <= row["cost_after"] <= row["cost_before"] + 1e-6 <= batch_size + 1e-6
        assert 0.0 <= row["loss"] <= 4.0  # ||f - c||^2 of unit vectors
        record = records[int(row["epoch"])]
        assert row["loss"] == pytest.approx(record["loss"], rel=1e-12)
        assert row["changed"] == pytest.approx(record["changed"], rel=1e-12)
    # the exact default solver lowers the cost of the first epoch's random assignment
    assert rows[0]["cost_after"] < rows[0]["cost_before"]

    # stray rows of epochs after the checkpoint a run resumes from (as a run with
    # train.checkpoint_every > 1 leaves when killed) go as soon as it resumes, even when it
    # has nothing left to train; the rows of completed epochs stay as they were
    kept = (out / FILENAME).read_text()
    (out / FILENAME).write_text(kept + "2,999,0.5,0.0,0.0,9.0\n3,999,0.5,0.0,0.0,9.0\n")
    result = natkit_cli("run", "--resume", str(out), "--no-eval")
    assert result.exit_code == 0, result.stderr
    assert (out / FILENAME).read_text() == kept
    # a resumed run that trains on appends its new epochs
    result = natkit_cli("run", "--resume", str(out), "--no-eval", "--set", "train.epochs=3")
    assert result.exit_code == 0, result.stderr
    assert (out / FILENAME).read_text().startswith(kept)
    rows = read_csv(out / FILENAME)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[2]["batches"] == 4 and rows[2]["loss"] == pytest.approx(epoch_records(out)[2]["loss"])


def test_only_reassigning_epochs_get_rows(natkit_cli, tiny_sets, tmp_path):
    out = tmp_path / "run"
    result = natkit_cli("run", "--no-eval", "--out", str(out),
                        *tiny_sets("method.permute_every=2", "train.epochs=3"))
    assert result.exit_code == 0, result.stderr
    rows = read_csv(out / FILENAME)
    assert [row["epoch"] for row in rows] == [0, 2]
    records = epoch_records(out)
    assert sorted(records) == [0, 1, 2] and records[1]["changed"] is None
    assert all(row["batches"] == 4 for row in rows)
