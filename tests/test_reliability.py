"""Interruptions and untrusted files: SIGKILL and Ctrl-C at any moment, then an exact resume."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from natkit import checkpoint, engine, files, lifecycle
from natkit.checkpoint import load_checkpoint, restore_run_state, save_checkpoint
from natkit.cli import app
from natkit.errors import CheckpointError, OutputError
from natkit.testing import TINY, StopAfter, assert_same_state

RUN = [*TINY, "train.epochs=3", "train.log_every=1", "deterministic=true", "eval.enabled=false"]


def natkit_run(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "natkit", "run", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def set_args(texts):
    return [a for t in texts for a in ("--set", t)]


def last_step(run_dir: Path) -> int:
    steps = [r["step"] for r in checkpoint.read_metrics(run_dir / "metrics.jsonl")]
    return max(steps, default=0)


def interrupt_after(proc: subprocess.Popen, run_dir: Path, step: int, sig: int) -> int:
    """Send ``sig`` once the run has logged ``step``; returns the exit code."""
    deadline = time.monotonic() + 120
    while last_step(run_dir) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc.returncode


def test_killed_at_several_moments_then_resumed_equals_an_uninterrupted_run(tmp_path):
    reference = natkit_run("--out", str(tmp_path / "ref"), *set_args(RUN))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()

    run_dir = tmp_path / "run"
    first = natkit_run("--out", str(run_dir), *set_args(RUN))
    assert interrupt_after(first, run_dir, 2, signal.SIGKILL) == -signal.SIGKILL
    for step in (5, 8, 11):  # mid reassignment epoch, mid plain epoch, near the end
        proc = natkit_run("--resume", str(run_dir))
        code = interrupt_after(proc, run_dir, step, signal.SIGKILL)
        assert code in (-signal.SIGKILL, 0)
    final = natkit_run("--resume", str(run_dir))
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert not list(run_dir.glob(".*.tmp-*"))  # no half-written file left behind
    assert_same_state(load_checkpoint(run_dir / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "ref" / "checkpoint.pt"))


def test_ctrl_c_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(tmp_path):
    reference = natkit_run("--out", str(tmp_path / "ref"), *set_args(RUN))
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    run_dir = tmp_path / "run"
    proc = natkit_run("--out", str(run_dir), *set_args(RUN))
    deadline = time.monotonic() + 120
    while last_step(run_dir) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted: checkpoint saved" in err and "Traceback" not in err
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] >= 6
    final = natkit_run("--resume", str(run_dir))
    assert final.wait(timeout=300) == 0
    assert_same_state(load_checkpoint(run_dir / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "ref" / "checkpoint.pt"))


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OutputError, match="cannot write .*; the previous file is kept"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_mid_run_costs_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real_fsync = os.fsync
    writes = {"checkpoint": 0}

    def fsync(fd):
        if "checkpoint.pt" in os.readlink(f"/proc/self/fd/{fd}"):
            writes["checkpoint"] += 1
            if writes["checkpoint"] > 1:  # the first epoch's checkpoint lands, the second does not
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "run"), *set_args(RUN)])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "no space is left on the device; the previous file is kept" in last
    assert "Traceback" not in result.output
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


class Payload:
    """Anything that is not a tensor or plain data."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_carrying_a_pickled_object_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: it holds pickled objects"):
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out


def test_truncated_and_foreign_checkpoints_are_named(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt' is truncated or corrupt"):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(CheckpointError, match="not a natkit checkpoint"):
        load_checkpoint(other)


def test_a_checkpoint_from_another_architecture_is_refused(tiny_config, tmp_path):
    lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run").train()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    wide = engine.Run(tiny_config("backbone.widths=[4,8,8,8,16]"), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"does not fit this run's config: 'backbone\.\S+' "
                                              r"has shape \(\d+(, \d+)*\); this config's network has"):
        restore_run_state(wide, state, tmp_path / "run" / "checkpoint.pt", 1)


DROPOUT_HEAD = ("head.hidden=[16]", "head.dropout=0.5", "deterministic=true")


def _same_training(a: dict, b: dict) -> None:
    for key in ("model", "optimizer", "method", "rng", "step", "epoch"):
        assert_same_state(a[key], b[key], key)


def test_the_number_of_loader_workers_does_not_change_the_training(tiny_config, tmp_path):
    for workers in (0, 2):
        lifecycle.start(tiny_config(*DROPOUT_HEAD, f"train.num_workers={workers}"),
                     tmp_path / f"w{workers}").train()
    _same_training(load_checkpoint(tmp_path / "w0" / "checkpoint.pt"),
                   load_checkpoint(tmp_path / "w2" / "checkpoint.pt"))


def test_a_stop_mid_epoch_with_workers_and_dropout_resumes_exactly(tiny_config, tmp_path, host):
    extra = (*DROPOUT_HEAD, "train.num_workers=2", "train.epochs=2")
    lifecycle.start(tiny_config(*extra), tmp_path / "full").train()
    host.register(StopAfter(step=5), name="stopper")
    assert lifecycle.start(tiny_config(*extra), tmp_path / "part").train() is False
    host.unregister("stopper")
    lifecycle.resume(tmp_path / "part").train()
    _same_training(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                   load_checkpoint(tmp_path / "full" / "checkpoint.pt"))
