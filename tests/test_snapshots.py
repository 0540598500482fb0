"""Snapshots (train.keep_every): kept beside the rolling checkpoint, evaluated one by one or as a curve."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from natkit import lifecycle
from natkit.checkpoint import load_checkpoint, save_checkpoint, snapshot_epochs, snapshot_path
from natkit.errors import CheckpointError
from natkit.evaluation.protocol import evaluate_run
from natkit.evaluation.snapshots import evaluate_curve, evaluate_snapshot
from natkit.testing import EXACT, assert_same_state

QUIET = Console(stderr=True, quiet=True)
FAST_EVAL = ("eval.probes=[linear,knn]", "eval.plots=false")


def test_snapshots_are_kept_every_k_epochs_and_equal_the_checkpoint_of_that_epoch(tiny_config,
                                                                                  tmp_path):
    run = lifecycle.start(tiny_config("train.epochs=4", "train.keep_every=2", EXACT),
                          tmp_path / "kept", console=QUIET)
    run.train()
    assert snapshot_epochs(tmp_path / "kept") == [2, 4]
    short = lifecycle.start(tiny_config("train.epochs=2", "train.keep_every=2", EXACT),
                            tmp_path / "short", console=QUIET)
    short.train()
    # the snapshot of epoch 2 is the very state a run stopped at epoch 2 ends with
    snapshot = load_checkpoint(snapshot_path(tmp_path / "kept", 2))
    final = load_checkpoint(tmp_path / "short" / "checkpoint.pt")
    snapshot["config"]["train"]["epochs"] = final["config"]["train"]["epochs"]
    assert_same_state(snapshot, final)
    assert_same_state(load_checkpoint(snapshot_path(tmp_path / "kept", 4)),
                      load_checkpoint(tmp_path / "kept" / "checkpoint.pt"))


def test_no_snapshots_by_default_and_keep_every_changes_on_resume(tiny_config, tmp_path):
    lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run", console=QUIET).train()
    assert snapshot_epochs(tmp_path / "run") == []
    resumed = lifecycle.resume(tmp_path / "run", tiny_config("train.epochs=3", "train.keep_every=1"),
                               console=QUIET)
    resumed.train()
    assert snapshot_epochs(tmp_path / "run") == [2, 3]


def test_snapshots_are_written_even_between_rolling_checkpoints(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config("train.epochs=3", "train.checkpoint_every=3",
                                      "train.keep_every=1"), tmp_path / "run", console=QUIET)
    run.train()
    assert snapshot_epochs(tmp_path / "run") == [1, 2, 3]
    assert [load_checkpoint(snapshot_path(tmp_path / "run", e))["epoch"] for e in (1, 2, 3)] \
        == [1, 2, 3]


def test_a_snapshot_evaluation_matches_the_checkpoint_of_its_epoch(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    lifecycle.start(tiny_config("train.keep_every=1", *FAST_EVAL), run_dir, console=QUIET).train()
    final = evaluate_run(run_dir, console=QUIET)
    results_before = (run_dir / "results.json").read_text()
    out = evaluate_snapshot(run_dir, 2, console=QUIET)
    assert out["results"] == final["results"]
    first = evaluate_snapshot(run_dir, 1, console=QUIET)
    assert first["details"]["epochs_trained"] == 1
    written = json.loads((run_dir / "snapshots" / "epoch-0001.json").read_text())
    assert written["results"] == first["results"]
    assert (run_dir / "results.json").read_text() == results_before  # results.json is epoch 2's


def test_the_curve_probes_the_random_init_once_and_every_kept_epoch(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    lifecycle.start(tiny_config("train.keep_every=1", *FAST_EVAL), run_dir, console=QUIET).train()
    curve = evaluate_curve(run_dir, console=QUIET)
    assert list(curve) == [0, 1, 2]
    assert set(curve[0]) == {"linear", "knn"}
    final = evaluate_run(run_dir, console=QUIET)
    assert curve[2] == {p: a["trained"] for p, a in final["results"].items()}
    assert curve[0] == {p: a["random_init"] for p, a in final["results"].items()}
    on_disk = json.loads((run_dir / "curve.json").read_text())
    assert {int(k): v for k, v in on_disk.items()} == curve
    assert (run_dir / "curve.png").stat().st_size > 0
    # epoch 1 and 2's random init was not probed twice: only the first epoch has a baseline
    second = json.loads((run_dir / "snapshots" / "epoch-0002.json").read_text())
    assert all(set(a) == {"trained"} for a in second["results"].values())


def test_a_missing_epoch_names_the_ones_kept(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    lifecycle.start(tiny_config("train.keep_every=1", *FAST_EVAL), run_dir, console=QUIET).train()
    with pytest.raises(CheckpointError, match="no checkpoint of epoch 5; valid: 1, 2"):
        evaluate_snapshot(run_dir, 5, console=QUIET)



def test_a_snapshot_that_does_not_fit_the_config_is_refused_naming_the_snapshot(tiny_config,
                                                                                 tmp_path):
    run_dir = tmp_path / "run"
    lifecycle.start(tiny_config("train.keep_every=1", *FAST_EVAL), run_dir, console=QUIET).train()
    path = snapshot_path(run_dir, 1)
    state = load_checkpoint(path)
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(3)
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError) as refused:
        evaluate_snapshot(run_dir, 1, console=QUIET)
    assert str(refused.value).startswith(f"checkpoint '{path}' does not fit the run's config: "
                                         f"'{key}' has shape (3,); this config's network has (")
    assert "\n" not in str(refused.value)
    assert not (run_dir / "snapshots" / "epoch-0001.json").exists()

def test_eval_checkpoint_on_the_command_line(natkit_cli, tiny_sets, tmp_path):
    run_dir = tmp_path / "run"
    trained = natkit_cli("run", *tiny_sets("train.keep_every=1", *FAST_EVAL), "--no-eval",
                         "--out", str(run_dir))
    assert trained.exit_code == 0
    # the files listed are the files written: no results or plots without an evaluation
    assert "checkpoint.pt, snapshots/" in trained.output and "results.json" not in trained.output
    result = natkit_cli("eval", str(run_dir), "--checkpoint", "1")
    assert result.exit_code == 0, result.output
    assert (run_dir / "snapshots" / "epoch-0001.json").exists()
    assert not (run_dir / "results.json").exists()
    bad = natkit_cli("eval", str(run_dir), "--checkpoint", "last")
    assert bad.exit_code == 2
    assert "--checkpoint: expected an epoch number or 'all', got 'last'" in bad.output
    missing = natkit_cli("eval", str(run_dir), "--checkpoint", "9")
    assert missing.exit_code == 2 and "valid: 1, 2" in missing.output
    curve = natkit_cli("eval", str(run_dir), "--checkpoint", "all")
    assert curve.exit_code == 0, curve.output
    assert (run_dir / "curve.png").exists()


def test_the_benchmark_curve_reads_one_run_s_snapshots(natkit_host, tmp_path):
    from benchmarks.harness import measure
    from benchmarks.tables import TABLES

    overrides = ("data.num_train=64", "data.num_test=40", "data.image_size=16",
                 "backbone.widths=[4,8,8,8,8]", "train.batch_size=16", "train.epochs=2",
                 "eval.linear_iterations=10", "eval.knn_k=[1,3]", "device=cpu")
    result = measure(TABLES["epochs"], "nat", (), "tiny", 0, overrides, tmp_path)
    run_dir = Path(result.run_dir)
    assert snapshot_epochs(run_dir) == [1, 2]  # one training, a snapshot per epoch
    probed = json.loads((run_dir / "snapshots" / "epoch-0001.json").read_text())
    assert result.curve[1]["linear_test"] == probed["details"]["probes"]["linear"]["trained"][
        "accuracy"]
    # results.json rounds to 4 decimals, the details do not
    assert result.curve[2]["linear_test"] == pytest.approx(result.trained["linear"], abs=5e-5)
    assert result.curve[0]["linear_test"] == pytest.approx(result.random_init["linear"], abs=5e-5)
