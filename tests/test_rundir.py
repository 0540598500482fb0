"""A run directory belongs to one run, and to one writing process at a time."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from natkit import lifecycle
from natkit.cli import app
from natkit.errors import ConfigError
from natkit.rundir import RunLock
from natkit.testing import TINY

runner = CliRunner()


def cli_run(*args: str):
    sets = [a for t in (*TINY, "eval.enabled=false") for a in ("--set", t)]
    return runner.invoke(app, ["run", *args, *sets])


def test_a_second_writer_is_refused_while_the_first_holds_the_directory(tiny_config, tmp_path):
    first = lifecycle.start(tiny_config(), tmp_path / "run")  # holds the lock until it has trained
    with pytest.raises(ConfigError, match=r"is in use by natkit process \d+"):
        lifecycle.resume(tmp_path / "run")
    result = cli_run("--resume", str(tmp_path / "run"))
    assert result.exit_code == 2 and "is in use by natkit process" in result.stderr
    assert first.train()  # the first run is unharmed, and lets go when it is done
    assert lifecycle.resume(tmp_path / "run", tiny_config("train.epochs=3")).train()


def test_a_failed_resume_lets_go_of_the_directory(tiny_config, tmp_path):
    lifecycle.start(tiny_config(), tmp_path / "run").train()
    with pytest.raises(ConfigError, match="differs from the run's config.yaml"):
        lifecycle.resume(tmp_path / "run", tiny_config("train.lr=0.5"))
    assert not RunLock(tmp_path / "run").held
    lifecycle.resume(tmp_path / "run")  # would be refused if the failed resume still held it


def test_out_onto_a_folder_of_someone_elses_files_is_refused_and_leaves_them(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    result = cli_run("--out", str(folder))
    assert result.exit_code == 2
    assert "already holds files that are not a natkit run (e.g. 'notes.txt')" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "my notes"


def test_out_onto_an_empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli_run("--out", str(tmp_path / "empty"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "empty" / "checkpoint.pt").is_file()


def test_out_of_an_empty_string_is_the_current_directory_and_refused_when_it_holds_files(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("someone's project")
    result = cli_run("--out", "")
    assert result.exit_code == 2
    assert "--out: '.' already holds files that are not a natkit run" in result.stderr
