"""The csvlog hooks called directly: the sums, the rows, resumes and atomic rewrites."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from natkit_csvlog import plugin
from natkit_csvlog.table import COLUMNS, FILENAME, read_rows, write_rows

import natkit.files
from natkit.errors import OutputError


class FakeRun:
    """The attributes of natkit's RunView that the hooks read."""

    def __init__(self, run_dir: Path, epoch: int = 0, nat: bool = True) -> None:
        self.dir = run_dir
        self.epoch = epoch
        self.method = SimpleNamespace(assignment=object() if nat else None)


def reassign(run: FakeRun, epoch: int, changed: float, before: float, after: float) -> None:
    plugin.on_reassign(run=run, metrics={"epoch": epoch, "step": 0, "changed": changed,
                                         "cost_before": before, "cost_after": after})


def end_epoch(run: FakeRun, epoch: int, loss: float) -> None:
    plugin.on_epoch_end(run=run, metrics={"kind": "epoch", "epoch": epoch, "step": 0, "loss": loss,
                                          "changed": None, "lr": 0.1, "seconds": 1.0,
                                          "images_per_s": 1.0})


def write_epochs(path: Path, epochs: list[int]) -> None:
    write_rows(path, [{"epoch": e, "batches": 4, "changed": 0.5, "cost_before": -1.0,
                       "cost_after": -2.0, "loss": 1.0} for e in epochs])


def test_a_row_holds_the_means_of_the_epochs_batches(tmp_path):
    run = FakeRun(tmp_path)
    plugin.on_run_start(run=run)
    reassign(run, 0, 0.25, -1.0, -3.0)
    reassign(run, 0, 0.75, -2.0, -4.0)
    reassign(run, 0, 0.5, -3.0, -8.0)
    end_epoch(run, 0, 1.75)
    end_epoch(run, 1, 1.5)  # no reassignment in epoch 1: no row
    reassign(run, 2, 1.0, 5.0, 1.0)
    end_epoch(run, 2, 0.5)
    rows = read_rows(tmp_path / FILENAME)
    assert rows == [
        {"epoch": "0", "batches": "3", "changed": "0.5", "cost_before": "-2.0", "cost_after": "-5.0",
         "loss": "1.75"},
        {"epoch": "2", "batches": "1", "changed": "1.0", "cost_before": "5.0", "cost_after": "1.0",
         "loss": "0.5"},
    ]
    assert (tmp_path / FILENAME).read_text().splitlines()[0] == ",".join(COLUMNS)


def test_two_runs_in_one_process_keep_their_own_sums(tmp_path):
    a, b = FakeRun(tmp_path / "a"), FakeRun(tmp_path / "b")
    for run in (a, b):
        run.dir.mkdir()
        plugin.on_run_start(run=run)
    reassign(a, 0, 0.2, 0.0, 0.0)
    reassign(b, 0, 0.8, 0.0, 0.0)
    reassign(b, 0, 0.6, 0.0, 0.0)
    end_epoch(a, 0, 1.0)
    end_epoch(b, 0, 1.0)
    assert [r["batches"] for r in read_rows(a.dir / FILENAME)] == ["1"]
    assert float(read_rows(b.dir / FILENAME)[0]["changed"]) == pytest.approx(0.7)


def test_sums_of_an_epoch_that_never_ended_are_not_carried_into_the_next(tmp_path):
    run = FakeRun(tmp_path)
    plugin.on_run_start(run=run)
    reassign(run, 0, 0.9, 0.0, 0.0)  # epoch 0 reported no end (a caller other than natkit's loop)
    reassign(run, 1, 0.1, 0.0, 0.0)
    end_epoch(run, 1, 1.0)
    rows = read_rows(tmp_path / FILENAME)
    assert [(r["epoch"], r["batches"], r["changed"]) for r in rows] == [("1", "1", "0.1")]


def test_a_resumed_run_keeps_only_rows_of_completed_epochs(tmp_path):
    path = tmp_path / FILENAME
    write_epochs(path, [0, 1, 2, 3])
    run = FakeRun(tmp_path, epoch=2)
    plugin.on_run_start(run=run)
    assert [r["epoch"] for r in read_rows(path)] == ["0", "1"]
    # sums left over from before the resume are not carried into the resumed epoch
    reassign(run, 2, 0.5, 1.0, 1.0)
    plugin.on_run_start(run=run)
    reassign(run, 2, 0.1, 1.0, 1.0)
    end_epoch(run, 2, 1.0)
    rows = read_rows(path)
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and rows[2]["batches"] == "1"
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temp file left behind


def test_a_fresh_nat_run_starts_an_empty_log_and_a_supervised_run_writes_none(tmp_path):
    (tmp_path / "nat").mkdir()
    (tmp_path / "sup").mkdir()
    plugin.on_run_start(run=FakeRun(tmp_path / "nat"))
    assert (tmp_path / "nat" / FILENAME).read_text() == ",".join(COLUMNS) + "\n"
    sup = FakeRun(tmp_path / "sup", nat=False)
    plugin.on_run_start(run=sup)
    end_epoch(sup, 0, 1.0)
    assert list((tmp_path / "sup").iterdir()) == []


def test_a_failed_rewrite_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / FILENAME
    write_epochs(path, [0, 1])
    before = path.read_text()

    def fail(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(natkit.files.os, "replace", fail)
    with pytest.raises(OutputError, match=f"cannot write '{path}': no space is left on the "
                                          "device; the previous file is kept"):
        write_epochs(path, [0, 1, 2])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]
    monkeypatch.undo()
    write_epochs(path, [0, 1, 2])
    assert [r["epoch"] for r in read_rows(path)] == ["0", "1", "2"]


def test_reading_skips_incomplete_rows_and_a_missing_file(tmp_path):
    path = tmp_path / FILENAME
    assert read_rows(path) == []
    path.write_text(",".join(COLUMNS) + "\n0,4,0.5,-1.0,-2.0,1.0\n1,4,0.5\n")
    assert [r["epoch"] for r in read_rows(path)] == ["0"]
    assert os.listdir(tmp_path) == [FILENAME]
