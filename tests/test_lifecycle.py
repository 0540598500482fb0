"""A run's life has one owner: natkit.lifecycle starts or resumes, trains, evaluates and fires
on_run_start and on_run_end, on every way out."""

from __future__ import annotations

import json

import pytest

import natkit
from natkit import lifecycle
from natkit.errors import ConfigError, Interrupted, TrainingDiverged
from natkit.testing import StopAfter

FAST_EVAL = ("eval.probes=[knn]", "eval.plots=false", "eval.baseline=false")


class Recorder:
    """Records the lifecycle hooks it sees, with what they carried."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    @natkit.hookimpl
    def on_run_start(self, run):
        self.calls.append(("start", (run.epoch, run.step)))

    @natkit.hookimpl
    def on_run_end(self, run, results):
        self.calls.append(("end", results))


class Explode:
    """Stands for Ctrl-C pressed twice: the second press interrupts mid-step."""

    @natkit.hookimpl
    def on_step_end(self, run, metrics):
        if run.step == 2:
            raise KeyboardInterrupt


@pytest.fixture
def recorder(natkit_host):
    recorder = Recorder()
    natkit_host.register(recorder, name="recorder")
    return recorder


def test_execute_trains_evaluates_and_fires_both_hooks_once(tiny_config, tmp_path, recorder):
    run = lifecycle.start(tiny_config(*FAST_EVAL), tmp_path / "run")
    outcome = lifecycle.execute(run)
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert outcome.finished and outcome.results == written and set(written) == {"knn"}
    assert recorder.calls == [("start", (0, 0)), ("end", written)]
    assert outcome.outputs == ["config.yaml", "environment.json", "metrics.jsonl",
                               "checkpoint.pt", "results.json", "eval.json"]


def test_an_interrupted_run_ends_with_no_results_and_resumes_where_it_stopped(
        tiny_config, tmp_path, recorder, natkit_host):
    natkit_host.register(StopAfter(3), name="stop")
    outcome = lifecycle.execute(lifecycle.start(tiny_config(*FAST_EVAL), tmp_path / "run"))
    assert not outcome.finished and outcome.results is None
    assert recorder.calls == [("start", (0, 0)), ("end", None)]
    assert not (tmp_path / "run" / "results.json").exists()
    natkit_host.unregister("stop")
    resumed = lifecycle.open_run(tiny_config(*FAST_EVAL), tmp_path / "run")  # sees a checkpoint
    assert (resumed.epoch, resumed.step) == (0, 3)
    assert lifecycle.execute(resumed).finished
    assert recorder.calls[2:] == [("start", (0, 3)), ("end", recorder.calls[-1][1])]
    assert recorder.calls[-1][1] is not None


def test_a_diverged_run_still_ends_its_life(tiny_config, tmp_path, recorder):
    run = lifecycle.start(tiny_config("train.lr=1e30", "train.warmup_steps=0"), tmp_path / "run")
    with pytest.raises(TrainingDiverged):
        lifecycle.execute(run)
    assert [name for name, _ in recorder.calls] == ["start", "end"]


def test_a_second_ctrl_c_is_one_line_saying_what_is_kept(tiny_config, tmp_path, recorder,
                                                         natkit_host):
    natkit_host.register(Explode(), name="explode")
    run = lifecycle.start(tiny_config(), tmp_path / "run")
    with pytest.raises(Interrupted, match=r"^interrupted: training stopped at once; the last "
                                          r"checkpoint saved is kept in .*checkpoint\.pt; resume "
                                          r"with: natkit run --resume "):
        lifecycle.execute(run)
    assert recorder.calls[-1] == ("end", None)
    assert not run.lock.held  # the directory is free for the resume


def test_open_run_starts_a_new_directory_and_refuses_changes_a_resume_cannot_make(
        tiny_config, tmp_path):
    run = lifecycle.open_run(tiny_config("train.epochs=1"), tmp_path / "run")
    assert lifecycle.execute(run, evaluate=False).finished
    longer = lifecycle.open_run(tiny_config("train.epochs=2"), tmp_path / "run")
    assert (longer.epoch, longer.config.train.epochs) == (1, 2)
    longer.lock.release()
    with pytest.raises(ConfigError, match="--resume: seed differs"):
        lifecycle.open_run(tiny_config("train.epochs=2", "seed=1"), tmp_path / "run")


def test_a_run_whose_evaluation_could_not_run_is_refused_before_training(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="eval.layer: 'conv9' is not a tap of backbone"):
        lifecycle.start(tiny_config("eval.layer=conv9"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


class FailingStart:
    @natkit.hookimpl
    def on_run_start(self, run):
        raise RuntimeError("the logger could not open its file")


def test_a_failing_start_hook_still_ends_the_run_and_frees_its_directory(tiny_config, tmp_path,
                                                                         recorder, natkit_host):
    natkit_host.register(FailingStart(), name="failing")
    run = lifecycle.start(tiny_config(), tmp_path / "run")
    with pytest.raises(RuntimeError, match="could not open"):
        lifecycle.execute(run)
    assert recorder.calls[-1] == ("end", None)
    assert not run.lock.held
    with lifecycle.holding(tmp_path / "run"):  # another process could take it now
        pass


def test_the_run_keeps_its_directory_locked_through_its_evaluation(tiny_config, tmp_path,
                                                                   monkeypatch):
    from natkit.rundir import RunLock

    seen = []

    def evaluate_run(run_dir, **kwargs):
        other = RunLock(run_dir)
        with pytest.raises(ConfigError, match="is in use by natkit process"):
            other.acquire()
        seen.append(run_dir)
        return {"results": {}}

    monkeypatch.setattr(lifecycle, "evaluate_run", evaluate_run)
    run = lifecycle.start(tiny_config(), tmp_path / "run")
    assert lifecycle.execute(run).finished and seen == [tmp_path / "run"]
    assert not run.lock.held


def test_every_start_and_resume_records_its_environment(tiny_config, tmp_path, monkeypatch):
    import subprocess

    import torch

    repo = tmp_path / "repo"
    repo.mkdir()
    for command in (["init", "-q"], ["-c", "user.email=a@b", "-c", "user.name=n", "commit", "-q",
                                     "--allow-empty", "-m", "start"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.chdir(repo)  # the run starts inside a repository
    run = lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run")
    assert lifecycle.execute(run, evaluate=False).finished
    monkeypatch.chdir(tmp_path)  # and resumes outside one
    resumed = lifecycle.resume(tmp_path / "run", tiny_config("train.epochs=2"))
    resumed.lock.release()
    sessions = json.loads((tmp_path / "run" / "environment.json").read_text())["sessions"]
    assert [(s["epoch"], s["git"]) for s in sessions] == [
        (0, {"commit": head, "dirty": False, "root": str(repo.resolve())}), (1, None)]
    first = sessions[0]
    assert first["torch"] == torch.__version__ and first["natkit"] == natkit.__version__
    assert first["device"] == "cpu" and first["world_size"] == 1 and first["platform"]
    assert set(first) >= {"cuda", "cudnn", "devices", "python", "started"}
