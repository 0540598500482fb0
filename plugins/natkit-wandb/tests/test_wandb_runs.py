"""natkit-wandb in real natkit runs, offline: the run's W&B files, read back, hold what the run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from natkit_wandb.plugin import LOG_DIR, PROJECT, RUN_ID
from rich.console import Console

from natkit import lifecycle
from natkit.hookspecs import hookimpl
from natkit.testing import StopAfter

STEP_KEYS = ("loss", "lr", "images_per_s")
EPOCH_KEYS = ("loss", "changed", "lr", "seconds", "images_per_s")
QUIET = Console(stderr=True, quiet=True)


def read_records(run_dir: Path, kind: str) -> list[dict]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == kind]


def assert_matches_metrics(history: dict[int, dict], run_dir: Path) -> None:
    """The train/ and epoch/ values are metrics.jsonl's step and epoch records, step for step."""
    for section, kind, keys in (("train", "step", STEP_KEYS), ("epoch", "epoch", EPOCH_KEYS)):
        for key in keys:
            logged = [(step, row[f"{section}/{key}"]) for step, row in sorted(history.items())
                      if f"{section}/{key}" in row]
            assert logged == [(r["step"], r[key]) for r in read_records(run_dir, kind)
                              if r[key] is not None], f"{section}/{key}"


def test_a_fresh_natkit_process_finds_the_plugin(natkit_process):
    result = natkit_process("plugins")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "natkit-wandb" in line]
    assert len(rows) == 1 and " ok " in rows[0] and "0.1.0" in rows[0], result.stdout


def test_an_offline_run_holds_the_runs_metrics_results_plots_and_config(
        natkit_cli, tiny_sets, tiny_config, tmp_path, wandb_sessions):
    out = tmp_path / "run"
    overrides = ("method.permute_every=1",)
    result = natkit_cli("run", "--out", str(out), *tiny_sets(*overrides))
    assert result.exit_code == 0, result.stderr

    # not logged in, no WANDB_MODE: one offline W&B run, its id kept in the run directory
    [session] = wandb_sessions(out)
    run_id = (out / LOG_DIR / RUN_ID).read_text().strip()
    assert session.folder.name.startswith("offline-run-") and session.folder.name.endswith(run_id)
    assert (session.run.run_id, session.run.project, session.run.display_name) == (run_id, PROJECT, "run")
    assert session.exit_code == 0
    # the resolved config, nested as natkit writes it (W&B shows train.lr and so on)
    assert session.config == json.loads(json.dumps(tiny_config(*overrides).to_dict()))

    history = session.history
    assert_matches_metrics(history, out)
    # NAT reassigns every batch (permute_every=1): one row a step, whose mean over an epoch
    # is the epoch's `changed`
    assert [s for s in sorted(history) if "reassign/changed" in history[s]] == list(range(1, 9))
    for record in read_records(out, "epoch"):
        mine = [history[s]["reassign/changed"] for s in range(record["step"] - 3, record["step"] + 1)]
        assert np.mean(mine) == pytest.approx(record["changed"], rel=1e-12)
    assert all(history[s]["reassign/cost_after"] <= history[s]["reassign/cost_before"] + 1e-6
               for s in range(1, 9))

    # results.json's leaves, at the last step and in the final summary, with the last values
    results = json.loads((out / "results.json").read_text())
    probes = {f"probe/{probe}/{k}": v for probe, values in results.items() for k, v in values.items()}
    assert probes and {k: history[8][k] for k in probes} == probes
    summary = session.summary
    assert {k: summary[k] for k in probes} == probes
    assert summary["epoch/loss"] == read_records(out, "epoch")[-1]["loss"]
    assert summary["train/loss"] == read_records(out, "step")[-1]["loss"]
    assert summary["_step"] == 8

    # the evaluation's plots, byte for byte
    for name in ("loss", "filters", "neighbours"):
        image = history[8][f"plots/{name}"]
        assert image["_type"] == "image-file"
        assert (session.folder / "files" / image["path"]).read_bytes() == (out / f"{name}.png").read_bytes()


def test_a_resumed_run_continues_the_same_wandb_run(natkit_host, tiny_config, tmp_path,
                                                    wandb_sessions, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's choice is respected
    out = tmp_path / "run"
    natkit_host.register(StopAfter(5), name="stop")  # in epoch 1, after epoch 0's 4 steps
    outcome = lifecycle.execute(lifecycle.start(tiny_config(), out, console=QUIET), evaluate=False)
    assert not outcome.finished
    natkit_host.unregister("stop")
    first = (out / LOG_DIR / RUN_ID).read_text()
    outcome = lifecycle.execute(lifecycle.resume(out, console=QUIET), evaluate=False)
    assert outcome.finished and (out / LOG_DIR / RUN_ID).read_text() == first

    before, after = wandb_sessions(out)
    assert before.run.run_id == after.run.run_id == first.strip()
    assert before.exit_code == after.exit_code == 0
    # the second session takes over after the checkpoint (step 5): no step twice
    assert max(before.history) == 4 and min(after.history) == 6  # 5 logged nothing
    assert_matches_metrics({**before.history, **after.history}, out)


class CrashAt:
    """A plugin that fails the run at a step."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run, metrics) -> None:
        if run.step == self.step:
            raise RuntimeError("crashed")


def test_a_run_ending_in_an_error_is_marked_failed(natkit_host, tiny_config, tmp_path, wandb_sessions):
    out = tmp_path / "run"
    natkit_host.register(CrashAt(6), name="crash")
    run = lifecycle.start(tiny_config(), out, console=QUIET)
    with pytest.raises(RuntimeError, match="crashed"):
        lifecycle.execute(run, evaluate=False)
    [session] = wandb_sessions(out)
    assert session.exit_code == 1
    assert max(session.history) == 4  # crashed in step 6's hooks, before it was logged


def test_a_run_started_while_the_caller_handles_an_error_is_not_marked_failed(
        natkit_host, tiny_config, tmp_path, wandb_sessions):
    out = tmp_path / "run"
    try:
        raise ConnectionError("the first attempt failed")  # a retry loop, a notebook cell
    except ConnectionError:
        outcome = lifecycle.execute(lifecycle.start(tiny_config("train.epochs=1"), out,
                                                    console=QUIET), evaluate=False)
    assert outcome.finished
    [session] = wandb_sessions(out)
    assert session.exit_code == 0
