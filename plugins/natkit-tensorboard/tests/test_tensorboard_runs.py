"""natkit-tensorboard in real natkit runs: the event files, read back, hold what the run wrote."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from natkit_tensorboard.plugin import LOG_DIR
from PIL import Image
from rich.console import Console
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import plugin_data_pb2

from natkit import lifecycle
from natkit.hookspecs import hookimpl
from natkit.tracking import flatten

STEP_KEYS = ("loss", "lr", "images_per_s")
EPOCH_KEYS = ("loss", "changed", "lr", "seconds", "images_per_s")


def events(run_dir: Path) -> ea.EventAccumulator:
    """Every event of the run's log directory (no sampling), purges applied as TensorBoard does."""
    acc = ea.EventAccumulator(str(run_dir / LOG_DIR),
                              size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    return acc.Reload()


def series(acc: ea.EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def expected(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of the records holding ``key``, the value rounded to float32 as events store it."""
    return [(r["step"], float(np.float32(r[key]))) for r in records if r.get(key) is not None]


def read_records(run_dir: Path, kind: str) -> list[dict]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == kind]


def assert_matches_metrics(acc: ea.EventAccumulator, run_dir: Path) -> None:
    """The train/ and epoch/ scalars are metrics.jsonl's step and epoch records, step for step."""
    steps, epochs = read_records(run_dir, "step"), read_records(run_dir, "epoch")
    for key in STEP_KEYS:
        assert series(acc, f"train/{key}") == expected(steps, key), key
    for key in EPOCH_KEYS:
        assert series(acc, f"epoch/{key}") == expected(epochs, key), key


def test_a_fresh_natkit_process_finds_the_plugin(natkit_process):
    result = natkit_process("plugins")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "natkit-tensorboard" in line]
    assert len(rows) == 1 and " ok " in rows[0] and "0.1.0" in rows[0], result.stdout


def test_the_events_hold_the_runs_metrics_results_plots_and_config(natkit_cli, tiny_sets,
                                                                   tiny_config, tmp_path):
    out = tmp_path / "run"
    overrides = ("method.permute_every=1",)
    result = natkit_cli("run", "--out", str(out), *tiny_sets(*overrides))
    assert result.exit_code == 0, result.stderr
    acc = events(out)
    assert_matches_metrics(acc, out)

    # NAT reassigns every batch (permute_every=1): one record a step, whose mean over an
    # epoch is the epoch's `changed`
    changed = series(acc, "reassign/changed")
    assert [step for step, _ in changed] == list(range(1, 9))
    for record in read_records(out, "epoch"):
        mine = [v for step, v in changed if record["step"] - 4 < step <= record["step"]]
        assert np.mean(mine) == pytest.approx(record["changed"], rel=1e-6)
    before, after = series(acc, "reassign/cost_before"), series(acc, "reassign/cost_after")
    assert [s for s, _ in before] == [s for s, _ in after] == list(range(1, 9))
    assert all(a <= b + 1e-5 for (_, b), (_, a) in zip(before, after, strict=True))

    # results.json, leaf for leaf, at the run's last step
    results = flatten(json.loads((out / "results.json").read_text()), "probe")
    assert results  # the probes ran
    for tag, value in results.items():
        assert series(acc, tag) == [(8, float(np.float32(value)))], tag
    reassign = {f"reassign/{k}" for k in ("changed", "cost_before", "cost_after")}
    assert set(acc.Tags()["scalars"]) == ({f"train/{k}" for k in STEP_KEYS} | reassign
                                          | {f"epoch/{k}" for k in EPOCH_KEYS} | set(results))

    # the evaluation's plots, pixel for pixel
    assert sorted(acc.Tags()["images"]) == ["plots/filters", "plots/loss", "plots/neighbours"]
    for tag in acc.Tags()["images"]:
        [image] = acc.Images(tag)
        drawn = np.asarray(Image.open(out / f"{tag.split('/')[1]}.png").convert("RGB"))
        logged = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        assert image.step == 8 and np.array_equal(logged, drawn), tag

    # the resolved config as hyperparameters, one per dotted key
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    logged = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    config = flatten(tiny_config(*overrides).to_dict(), sep=".")
    assert set(logged) == set(config)
    assert logged["train.lr"].number_value == config["train.lr"]
    assert logged["method.name"].string_value == "nat"
    assert logged["backbone.widths"].string_value == json.dumps(config["backbone.widths"])
    assert logged["eval.enabled"].bool_value is True


class CrashAt:
    """A plugin that fails the run at a step, as a kill would, after the last checkpoint."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run, metrics) -> None:
        if run.step == self.step:
            raise RuntimeError("crashed")


def test_a_resumed_run_continues_the_log_without_repeating_steps(natkit_host, tiny_config, tmp_path):
    out, quiet = tmp_path / "run", Console(stderr=True, quiet=True)
    natkit_host.register(CrashAt(7), name="crash")  # epoch 0's checkpoint is at step 4
    run = lifecycle.start(tiny_config(), out, console=quiet)
    with pytest.raises(RuntimeError, match="crashed"):
        lifecycle.execute(run, evaluate=False)
    natkit_host.unregister("crash")
    # the crashed run logged step 6, after its checkpoint
    assert (6, float(np.float32(read_records(out, "step")[-1]["loss"]))) in series(events(out), "train/loss")

    lifecycle.execute(lifecycle.resume(out, console=quiet), evaluate=False)
    assert len(list((out / LOG_DIR).glob("events.out.tfevents.*"))) == 2  # one file a session
    acc = events(out)
    # steps 5..8 once each: the crashed run's step 6 is purged, the resumed run's kept
    assert [step for step, _ in series(acc, "train/loss")] == [2, 4, 6, 8]
    assert_matches_metrics(acc, out)
    assert [step for step, _ in series(acc, "reassign/changed")] == [1, 2, 3, 4]  # epoch 0 only


def test_a_run_resumed_before_its_first_checkpoint_logs_each_step_once(natkit_host, tiny_config,
                                                                        tmp_path):
    out, quiet = tmp_path / "run", Console(stderr=True, quiet=True)
    natkit_host.register(CrashAt(2), name="crash")  # in epoch 0: no checkpoint yet
    with pytest.raises(RuntimeError, match="crashed"):
        lifecycle.execute(lifecycle.start(tiny_config("train.log_every=1"), out, console=quiet),
                          evaluate=False)
    natkit_host.unregister("crash")
    assert not (out / "checkpoint.pt").exists()
    lifecycle.execute(lifecycle.resume(out, console=quiet), evaluate=False)
    acc = events(out)
    assert [step for step, _ in series(acc, "train/loss")] == list(range(1, 9))
    assert_matches_metrics(acc, out)
