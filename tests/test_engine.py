"""The training engine: files, reassignment order, schedules, resumes and divergence."""

from __future__ import annotations

import json

import pytest
import torch

import natkit
from natkit import engine, lifecycle
from natkit.checkpoint import load_checkpoint, read_metrics
from natkit.errors import CheckpointError, ConfigError, TrainingDiverged
from natkit.methods import Batch
from natkit.schedule import learning_rate
from natkit.testing import EXACT, StopAfter, assert_close_weights, assert_same_state


def test_a_run_writes_config_metrics_and_a_safe_checkpoint(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config(), tmp_path / "run")
    assert run.train()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # weights_only=True inside
    assert state["epoch"] == 2 and state["step"] == 2 * (64 // 16)
    assert state["natkit_version"] == natkit.__version__
    assert torch.equal(torch.sort(state["method"]["assignment"]["perm"]).values, torch.arange(64))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert epochs[0]["changed"] > 0 and epochs[1]["changed"] is None  # permute_every = 3
    assert all(r["loss"] > 0 for r in records)
    assert (tmp_path / "run" / "config.yaml").read_text().startswith("seed: 0")


def test_targets_are_reassigned_before_the_loss_is_taken(tiny_config, tmp_path):
    run = engine.Run(tiny_config(), tmp_path)
    idx = torch.arange(16)
    out = torch.nn.functional.normalize(torch.randn(16, 8), dim=1).to(run.device)
    old = run.method.assignment.targets_of(idx).clone()
    run.method.start_epoch(0, run.view())  # epoch 0 reassigns (permute_every = 3)
    step = run.method.loss(out, Batch(indices=idx, labels=torch.zeros(16, dtype=torch.int64),
                                      epoch=0, step=0))
    new, loss = run.method.assignment.targets_of(idx), step.loss
    assert step.reassigned["changed"] > 0 and not torch.equal(new, old)
    torch.testing.assert_close(loss, (out - new).pow(2).sum(1).mean())
    assert loss < (out - old).pow(2).sum(1).mean()


@pytest.mark.parametrize("every, changes", [(0, [False, False]), (1, [True, True]),
                                            (2, [True, False])])
def test_permute_every_controls_which_epochs_reassign(tiny_config, tmp_path, every, changes):
    run = lifecycle.start(tiny_config(f"method.permute_every={every}"), tmp_path / "run")
    start = run.method.assignment.perm.clone()
    assert [run.method.reassigns_in(e) for e in range(2)] == changes
    run.train()
    assert (not torch.equal(run.method.assignment.perm, start)) == any(changes)


def test_schedule_warms_up_holds_then_decays_as_in_the_paper():
    lrs = [learning_rate(t, 0.1, warmup=4, t0=3, gamma=0.5) for t in range(10)]
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4:7] == pytest.approx([0.1] * 3)
    assert lrs[7:] == pytest.approx([0.1 / (1 + 0.5 * k) for k in range(3)])
    assert learning_rate(100, 0.1) == 0.1  # gamma 0: constant


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(tiny_config, tmp_path):
    full = lifecycle.start(tiny_config("train.epochs=3", EXACT), tmp_path / "full")
    full.train()
    part = lifecycle.start(tiny_config("train.epochs=1", EXACT), tmp_path / "part")
    part.train()
    resumed = lifecycle.resume(tmp_path / "part", tiny_config("train.epochs=3", EXACT))
    assert (resumed.epoch, resumed.step) == (1, 4)
    resumed.train()
    assert_same_state(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "full" / "checkpoint.pt"))


@pytest.mark.parametrize("method", ["nat", "supervised"])  # every built-in method
def test_an_interrupted_run_saves_mid_epoch_and_resumes_exactly(tiny_config, tmp_path, host,
                                                                method):
    assert natkit.list_components("method") == ["nat", "supervised"]  # a new one joins above
    full = lifecycle.start(tiny_config(EXACT, f"method={method}"), tmp_path / "full")
    full.train()
    host.register(StopAfter(step=6), name="stopper")
    part = lifecycle.start(tiny_config(EXACT, f"method={method}"), tmp_path / "part")
    assert part.train() is False
    host.unregister("stopper")
    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 2, 6)
    resumed = lifecycle.resume(tmp_path / "part")
    resumed.train()
    assert_same_state(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "full" / "checkpoint.pt"))
    steps = [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")
             if r["kind"] == "step"]
    assert steps == sorted(set(steps))  # nothing logged twice across the resume


@pytest.mark.parametrize("stop", [2, 4])  # inside the first epoch, and after its last batch
def test_an_epoch_resumed_inside_records_the_loss_of_all_its_batches(tiny_config, tmp_path, host,
                                                                     stop):
    full = lifecycle.start(tiny_config(EXACT), tmp_path / "full")
    full.train()
    host.register(StopAfter(step=stop), name="stopper")
    part = lifecycle.start(tiny_config(EXACT), tmp_path / "part")
    assert part.train() is False
    host.unregister("stopper")
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["batch_in_epoch"] == stop
    lifecycle.resume(tmp_path / "part").train()

    def epochs(run):
        return [r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "epoch"]

    whole, resumed = epochs("full"), epochs("part")
    assert [r["epoch"] for r in resumed] == [0, 1]
    for a, b in zip(whole, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # not 0.0, not half an epoch
        assert b["changed"] == pytest.approx(a["changed"])


def test_resume_refuses_a_changed_config(tiny_config, tmp_path):
    lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run").train()
    with pytest.raises(ConfigError, match="train.lr differs from the run's config.yaml"):
        lifecycle.resume(tmp_path / "run", tiny_config("train.lr=0.5"))
    config_file = tmp_path / "run" / "config.yaml"
    config_file.write_text(config_file.read_text().replace("lr: 0.05", "lr: 0.07"))
    with pytest.raises(CheckpointError, match="no longer matches its checkpoint"):
        lifecycle.resume(tmp_path / "run")


def test_start_refuses_a_directory_that_holds_a_run(tiny_config, tmp_path):
    lifecycle.start(tiny_config(), tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run; resume it with --resume"):
        lifecycle.start(tiny_config(), tmp_path / "run")


class PoisonWeights:
    """A plugin that turns the weights to NaN after a given step."""

    def __init__(self, step):
        self.step = step

    @natkit.hookimpl
    def on_step_end(self, run, metrics):
        if run.step == self.step:
            with torch.no_grad():
                for p in run.network.parameters():
                    p.fill_(float("nan"))


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        tiny_config, tmp_path, host):
    run = lifecycle.start(tiny_config("train.epochs=3", "method.permute_every=2"), tmp_path / "run")
    host.register(PoisonWeights(step=5), name="poison")
    with pytest.raises(TrainingDiverged, match=r"by step 6 \(epoch 2\).*last good checkpoint "
                                               r"\(epoch 1\)"):
        run.train()
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_the_supervised_method_trains_on_labels_with_either_loss(tiny_config, tmp_path):
    for loss in ("softmax", "square"):
        run = lifecycle.start(tiny_config("method=supervised", f"method.loss={loss}"),
                           tmp_path / loss)
        assert run.method.classifier and run.method.state_dict() == {} and run.train()
        assert run.model.head[-1].out_features == 10
        assert run.model.normalize == (loss == "square")


def test_batch_larger_than_the_dataset_is_refused(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size: 128 is larger than the 64"):
        lifecycle.start(tiny_config("train.batch_size=128"), tmp_path / "run")


def test_metrics_are_json_lines(tiny_config, tmp_path):
    lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run").train()
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)


def test_a_null_head_takes_the_backbones_own_fc_layers(tiny_config, tmp_path):
    run = engine.Run(tiny_config("head.hidden=null"), tmp_path)
    layers = [type(m).__name__ for m in run.model.head]
    assert layers == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert run.model.head[1].out_features == 16  # backbone.fc=[16] in the tiny config
    assert run.model.head[-1].out_features == 8  # targets.dim
    linear = engine.Run(tiny_config(), tmp_path / "linear")
    assert [type(m).__name__ for m in linear.model.head] == ["Linear"]


def _losses(run):
    run.train()
    return [r["loss"] for r in read_metrics(run.dir / "metrics.jsonl") if r["kind"] == "step"]


@pytest.mark.parametrize("switch", ["train.channels_last=true", "train.compile=true"])
def test_speed_switches_compute_the_same_training(switch, tiny_config, tmp_path, full_float32):
    # deterministic kernels: on CUDA, cudnn.benchmark's free choice of algorithms differed by
    # 0.2% in the loss after two steps (H200), more than the switch is allowed to change
    plain = lifecycle.start(tiny_config("train.epochs=1", EXACT), tmp_path / "plain")
    fast = lifecycle.start(tiny_config("train.epochs=1", EXACT, switch), tmp_path / "fast")
    assert _losses(fast) == pytest.approx(_losses(plain), rel=1e-4)
    # the checkpoint is the same whatever the switch: plain parameter names, same tensors
    assert_close_weights(tmp_path / "plain", tmp_path / "fast", plain.device.type)


def test_channels_last_puts_the_convolutions_in_that_layout(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config("train.channels_last=true"), tmp_path / "run")
    convs = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_a_run_directory_of_natkit_0_1_is_read_with_its_method(tmp_path, host):
    from natkit.builders import read_run_config

    (tmp_path / "config.yaml").write_text(
        "seed: 3\nmode: supervised\nsupervised: {loss: square}\nnat: {permute_every: 5}\n")
    assert read_run_config(tmp_path).method == {"name": "supervised", "loss": "square"}
    (tmp_path / "config.yaml").write_text("mode: nat\nnat: {permute_every: 5}\n")
    assert read_run_config(tmp_path).method["permute_every"] == 5
