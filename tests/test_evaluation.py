"""Evaluation: BatchNorm recalibration, probes chosen on validation, results files and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from natkit import builders, lifecycle
from natkit.evaluation.features import extract_features, recalibrate_batchnorm
from natkit.evaluation.knn import knn_probe
from natkit.evaluation.probes import linear_probe, mlp_probe
from natkit.evaluation.protocol import evaluate_run
from natkit.evaluation.rows import Rows, statistics


def blobs(n=300, d=10, classes=3, spread=0.3, seed=0):
    """Gaussian clusters around fixed centres; ``seed`` draws the samples."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * 3
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def test_recalibrated_statistics_are_the_true_batch_statistics(tiny_config, tmp_path):
    config = tiny_config()
    dataset = builders.load_dataset(config, "train")
    net = builders.initial_network(config, dataset)
    bn = net.backbone.conv1[1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # default stats
    recalibrate_batchnorm(net, dataset, torch.device("cpu"), batch_size=16)
    with torch.no_grad():
        conv = net.backbone.conv1[0](net.preprocess(dataset.get_batch(torch.arange(64))))
    torch.testing.assert_close(bn.running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert not net.training and bn.momentum == 0.1  # restored, ready to extract


def _wrong_statistics(state):
    """A model state whose BatchNorm running statistics describe nothing the network computes."""
    return {k: v + 3.0 if k.endswith("running_mean") else v * 50.0
            if k.endswith("running_var") else v for k, v in state.items()}


def test_the_trained_network_is_probed_with_recomputed_statistics(tiny_config, monkeypatch):
    """Both networks get BatchNorm statistics of the unaugmented training images, so a trained
    network's running averages (of augmented batches; here plainly wrong) do not matter."""
    from rich.console import Console

    from natkit.evaluation import protocol

    config = tiny_config("eval.probes=[linear,knn]", "eval.plots=false")
    dataset = builders.load_dataset(config, "train")
    init = builders.initial_network(config, dataset)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    write = protocol.write_features

    def spy(net, ds, layer, device, path, *args, **kwargs):
        seen[path.name] = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
        return write(net, ds, layer, device, path, *args, **kwargs)

    monkeypatch.setattr(protocol, "write_features", spy)
    # "trained" is the random init itself, with wrong statistics: recomputed, the two are one
    out = protocol.evaluate(config, _wrong_statistics(init.state_dict()), console=Console(quiet=True))
    trained, random_init = seen["trained-train.f16"], seen["random_init-train.f16"]
    assert trained.keys() == random_init.keys() and trained
    for key, value in trained.items():
        torch.testing.assert_close(value, random_init[key], rtol=1e-5, atol=1e-6)
    for probe, accs in out["results"].items():
        assert accs["trained"] == accs["random_init"], probe


def test_a_classifier_is_read_with_recomputed_statistics_and_its_running_ones(tiny_config,
                                                                             monkeypatch):
    """The classifier accuracy uses the statistics the probes use; the reading with training's
    running averages is kept beside it."""
    from rich.console import Console

    from natkit.evaluation import protocol

    config = tiny_config("method=supervised", "eval.probes=[knn]", "eval.plots=false",
                         "eval.baseline=false")
    train, test = builders.load_dataset(config, "train"), builders.load_dataset(config, "test")
    net = builders.initial_network(config, train)
    state = _wrong_statistics(net.state_dict())
    net.load_state_dict(state)
    net.eval()
    images = test.get_batch(torch.arange(len(test)))
    with torch.no_grad():
        running = (net(images).argmax(1) == test.labels).float().mean().item()
        recalibrate_batchnorm(net, train, torch.device("cpu"), batch_size=256)
        recomputed = (net(images).argmax(1) == test.labels).float().mean().item()
        recomputed_means = net.backbone.conv1[1].running_mean.clone()
    classified_with: list[torch.Tensor] = []  # conv1's BatchNorm means at each classifier call

    def build(*args, **kwargs):
        built = builders.initial_network(*args, **kwargs)
        bn = built.backbone.conv1[1]
        built.register_forward_hook(lambda *_: classified_with.append(bn.running_mean.clone()))
        return built

    monkeypatch.setattr(protocol, "initial_network", build)
    details = protocol.evaluate(config, state, console=Console(quiet=True))["details"]
    batches = -(-len(test) // config.eval.batch_size)
    assert len(classified_with) == 2 * batches
    for means in classified_with[:batches]:
        torch.testing.assert_close(means, recomputed_means)
    for means in classified_with[batches:]:
        torch.testing.assert_close(means, state["backbone.conv1.1.running_mean"])
    assert details["classifier_accuracy"] == pytest.approx(recomputed)
    assert details["classifier_accuracy_running_statistics"] == pytest.approx(running)


def test_features_come_from_the_requested_tap(tiny_config):
    config = tiny_config()
    dataset = builders.load_dataset(config, "test")
    net = builders.initial_network(config, dataset)
    last = extract_features(net, dataset, "last", torch.device("cpu"), 16)
    conv3 = extract_features(net, dataset, "conv3", torch.device("cpu"), 16, tap_pool=2)
    assert last.shape == (40, net.backbone.num_features)
    assert conv3.shape == (40, 8 * 2 * 2)


def test_standardize_uses_only_the_fitting_statistics():
    fit, other = torch.randn(100, 4) * 5 + 3, torch.randn(10, 4)
    fit_rows = Rows.labelled(fit, torch.zeros(100, dtype=torch.int64))
    mean, std = statistics(fit_rows)  # the probes standardise every split with these
    fit_s = fit_rows.standardised(mean, std).read(np.arange(100))
    other_s = Rows.labelled(other, torch.zeros(10, dtype=torch.int64)).standardised(
        mean, std).read(np.arange(10))
    torch.testing.assert_close(fit_s.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(other_s, (other - fit.mean(0)) / fit.std(0))


@pytest.mark.parametrize("probe", ["linear", "mlp", "knn"])
def test_probes_separate_separable_data(probe):
    x, y = blobs()
    tx, ty = blobs(seed=1)
    kwargs = {"linear": {"weight_decays": [1e-4]}, "knn": {"ks": [1, 5]},
              "mlp": {"weight_decays": [1e-4], "hidden": 32, "epochs": 50, "batch_size": 64}}[probe]
    fn = {"linear": linear_probe, "mlp": mlp_probe, "knn": knn_probe}[probe]
    result = fn(x, y, tx[:90], ty[:90], **kwargs)
    assert result.accuracy > 0.95 and result.val_accuracy > 0.95 and result.train_accuracy > 0.95


def test_settings_are_chosen_on_validation_never_on_the_test_labels():
    x, y = blobs(spread=3.0)
    tx, ty = blobs(spread=3.0, seed=1)
    real = knn_probe(x, y, tx, ty, ks=[1, 5, 25, 50])
    shuffled = knn_probe(x, y, tx, ty[torch.randperm(len(ty))], ks=[1, 5, 25, 50])
    assert real.setting == shuffled.setting  # the test labels cannot move the choice
    assert real.val_accuracy == shuffled.val_accuracy
    assert real.accuracy > shuffled.accuracy


def test_linear_probe_trains_its_weights():
    """The failure of some ports: a 'linear eval' whose optimizer never steps."""
    x, y = blobs(spread=1.0)
    result = linear_probe(x, y, x, y, weight_decays=[0.0], iterations=30)
    assert result.accuracy > 0.9  # chance is 1/3


def test_evaluate_run_writes_results_details_and_plots(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config(), tmp_path / "run")
    run.train()
    out = evaluate_run(tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results) == {"linear", "mlp", "knn"}
    for accs in results.values():
        assert set(accs) == {"trained", "random_init"}
        assert all(0.0 <= v <= 1.0 for v in accs.values())
    details = json.loads((tmp_path / "run" / "eval.json").read_text())
    knn = details["probes"]["knn"]["trained"]
    assert knn["setting"]["k"] in (1, 3)
    assert set(knn) == {"accuracy", "setting", "val_accuracy", "train_accuracy"}
    assert out["results"] == results
    for name in ("loss.png", "filters.png", "neighbours.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_supervised_reports_the_classifier(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config("method=supervised", "eval.probes=[knn]", "eval.plots=false"),
                          tmp_path / "run")
    run.train()
    details = evaluate_run(tmp_path / "run")["details"]
    assert 0.0 <= details["classifier_accuracy"] <= 1.0
    assert not (tmp_path / "run" / "loss.png").exists()


def test_evaluation_is_repeatable(tiny_config, tmp_path):
    run = lifecycle.start(tiny_config("eval.probes=[linear,knn]", "eval.plots=false"),
                          tmp_path / "run")
    run.train()
    assert evaluate_run(tmp_path / "run")["results"] == evaluate_run(tmp_path / "run")["results"]


@pytest.mark.parametrize("extra", [(), ("method=supervised", "eval.probes=[knn,linear]")])
def test_every_phase_does_exactly_the_work_it_was_planned_with(tiny_config, tmp_path,
                                                              monkeypatch, extra):
    """The remaining-time estimate relies on each phase's planned units being its real work."""
    from natkit.evaluation import phases, protocol
    from natkit.progress import EvalProgress

    done: dict[str, tuple[int, int]] = {}

    class Recording(EvalProgress):
        def _close(self) -> None:
            if self.current is not None:
                done[self.current.key] = (self._done, self.current.units)

        def phase(self, key: str) -> None:
            self._close()
            super().phase(key)

        def finish(self) -> float:
            self._close()
            return super().finish()

    monkeypatch.setattr(protocol, "EvalProgress", Recording)
    lifecycle.start(tiny_config("train.epochs=1", *extra), tmp_path / "run").train()
    evaluate_run(tmp_path / "run")
    config = builders.read_run_config(tmp_path / "run")
    planned = phases.plan(config, ["trained", "random_init"], 64, 40,
                          classifier=config.method["name"] == "supervised")
    assert list(done) == [p.key for p in planned]
    assert all(units == work for units, work in done.values()), done


@pytest.mark.parametrize("broken", ["misshapen", "missing"])
def test_a_checkpoint_that_does_not_fit_the_config_is_refused_in_one_line_naming_the_key(
        tiny_config, tmp_path, broken):
    from rich.console import Console

    from natkit.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
    from natkit.errors import CheckpointError

    run_dir = tmp_path / "run"
    lifecycle.start(tiny_config("train.epochs=1", "eval.probes=[knn]", "eval.plots=false"),
                    run_dir).train()
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path)
    key = next(iter(state["model"]))
    if broken == "misshapen":
        state["model"][key] = torch.zeros(3)
        why = f"'{key}' has shape (3,); this config's network has ("
    else:
        del state["model"][key]
        why = f"missing key '{key}'"
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError) as refused:
        evaluate_run(run_dir, console=Console(quiet=True))
    message = str(refused.value)
    assert message.startswith(f"checkpoint '{path}' does not fit the run's config: {why}")
    assert "\n" not in message
    assert not (run_dir / "results.json").exists()


def test_results_and_details_are_written_together_or_not_at_all(tiny_config, tmp_path,
                                                                monkeypatch):
    import errno

    from rich.console import Console

    import natkit.files
    from natkit.errors import OutputError

    run_dir = tmp_path / "run"
    lifecycle.start(tiny_config("train.epochs=1", "eval.probes=[knn]", "eval.plots=false"),
                    run_dir).train()
    write_files = natkit.files.write_files
    written: list[list[str]] = []

    def recording(contents):
        written.append(sorted(path.name for path in contents))
        return write_files(contents)

    monkeypatch.setattr(natkit.files, "write_files", recording)
    evaluate_run(run_dir, console=Console(quiet=True))
    assert written == [["eval.json", "results.json"]]  # one write, both files
    before = {name: (run_dir / name).read_bytes() for name in written[0]}

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    def refused(contents):
        monkeypatch.setattr(natkit.files.os, "replace", full)  # only now: not the feature files
        return write_files(contents)

    monkeypatch.setattr(natkit.files, "write_files", refused)
    with pytest.raises(OutputError, match=f"cannot write '{run_dir / 'results.json'}': no space "
                                          "is left on the device; the previous file is kept"):
        evaluate_run(run_dir, console=Console(quiet=True))
    monkeypatch.undo()
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert not list(run_dir.glob(".*.tmp-*"))
