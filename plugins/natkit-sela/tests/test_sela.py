"""natkit-sela: balanced labels, the command line, and bit-exact resumes (natkit.testing fixtures)."""

from __future__ import annotations

import json

import pytest
import torch
from natkit_sela.balanced import balanced_labels

from natkit import lifecycle
from natkit.checkpoint import load_checkpoint, read_metrics
from natkit.errors import ConfigError
from natkit.testing import EXACT, StopAfter, assert_same_state

SELA = ("method=sela", "method.clusters=4", "train.epochs=3")


def sizes(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=k)


# (spread, skew): random logits; every image's argmax in cluster 0; and the same for a
# confident network (logits spread over ~20), whose label step needs thousands of iterations
@pytest.mark.parametrize("spread, skew", [(1.0, 0.0), (1.0, 6.0), (3.0, 20.0)])
def test_the_label_step_balances_the_clusters(spread, skew):
    logits = spread * torch.randn(600, 6, generator=torch.Generator().manual_seed(0))
    logits[:, 0] += skew
    if skew:
        assert sizes(logits.argmax(1), 6)[0] == 600
    counts = sizes(balanced_labels(logits), 6)
    assert counts.sum() == 600 and counts.min() >= 95 and counts.max() <= 105  # 100 each


def test_the_label_step_follows_the_logits_within_the_balance():
    # 4 well separated groups of 25 images: the balanced labels are the groups themselves
    groups = torch.arange(100) // 25
    logits = 8.0 * torch.nn.functional.one_hot(groups, 4).double()
    labels = balanced_labels(logits)
    assert torch.equal(labels, groups)


def test_the_plugin_is_listed_as_a_method(natkit_cli):
    result = natkit_cli("list", "methods")
    assert result.exit_code == 0, result.stderr
    for name, plugin in (("nat", "natkit "), ("supervised", "natkit "), ("sela", "natkit-sela")):
        rows = [line for line in result.stdout.splitlines() if f" {name} " in line]
        assert len(rows) == 1 and plugin in rows[0], result.stdout


def test_natkit_run_method_sela_trains_and_evaluates(natkit_process, tiny_sets, tmp_path):
    out = tmp_path / "run"
    result = natkit_process("run", "--method", "sela", "--out", str(out),
                            *tiny_sets(*SELA[1:], "eval.plots=false"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sela on shapes" in result.stderr and "4 clusters" in result.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"linear", "mlp", "knn"}
    assert all(set(accs) == {"trained", "random_init"} for accs in results.values())
    labels = load_checkpoint(out / "checkpoint.pt")["method"]["labels"]
    counts = sizes(labels, 4)
    assert counts.min() >= 12 and counts.max() <= 20  # 64 images, 16 a cluster
    epochs = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "epoch"]
    assert all(r["changed"] is not None for r in epochs)  # relabelled at every epoch's start


def test_the_labels_stay_balanced_through_training(natkit_run):
    run = natkit_run(*SELA, "method.clusters=8", "train.epochs=4", "eval.enabled=false")
    assert run.method.labelled_epoch == 3
    counts = sizes(run.method.labels.cpu(), 8)
    assert counts.min() >= 5 and counts.max() <= 11  # 64 images, 8 a cluster


def test_labels_piled_into_one_cluster_are_refused_naming_lam(tiny_config, tmp_path,
                                                              monkeypatch):
    from natkit_sela import method as sela

    # what a plan too flat to separate the images gives: every image's argmax is cluster 0
    monkeypatch.setattr(sela, "balanced_labels", lambda logits, *args: torch.zeros(
        len(logits), dtype=torch.int64))
    run = lifecycle.start(tiny_config(*SELA, "eval.enabled=false"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^method\.lam: SeLa's label step put 64 of 64 images "
                                          r"in one cluster \(a balanced share is 16\); lam=25 "
                                          r"is too flat"):
        lifecycle.execute(run)


def test_the_state_is_checked_and_a_relabelled_epoch_is_not_relabelled_again(tiny_config,
                                                                             tmp_path):
    run = lifecycle.start(tiny_config(*SELA, "eval.enabled=false"), tmp_path / "run")
    method, state = run.method, run.method.state_dict()
    assert state["labelled_epoch"] == -1
    assert torch.equal(sizes(state["labels"], 4), torch.full((4,), 16))  # random, exactly balanced
    stats = method.start_epoch(0, run.view())
    assert set(stats) == {"changed", "smallest_cluster", "largest_cluster"}
    assert all(type(value) is float for value in stats.values())
    assert method.start_epoch(0, run.view()) is None  # as a run resumed inside epoch 0 calls it
    labels = state["labels"]
    for bad, message in [({}, "not 64 int64 values"),
                         ({**state, "labels": labels[:10]}, "not 64 int64 values"),
                         ({**state, "labels": labels.int()}, "not 64 int64 values"),
                         ({**state, "labels": labels + 1}, r"not all in 0\.\.3"),
                         ({**state, "labelled_epoch": "1"}, "labelled_epoch is not an epoch")]:
        with pytest.raises(ValueError, match=message):
            method.load_state_dict(bad)
    method.load_state_dict(state)
    assert_same_state(method.state_dict(), state)


@pytest.mark.parametrize("stop", ["mid-epoch", "epoch boundary"])
def test_a_stopped_run_resumes_bit_exactly(natkit_host, tiny_config, tmp_path, stop):
    config = (*SELA, "eval.enabled=false", EXACT)
    lifecycle.start(tiny_config(*config), tmp_path / "full").train()
    if stop == "mid-epoch":
        natkit_host.register(StopAfter(step=6), name="stopper")  # epoch 1, after batch 2
        part = lifecycle.start(tiny_config(*config), tmp_path / "part")
        assert part.train() is False
        natkit_host.unregister("stopper")
    else:  # stopped after epoch 1: epoch 2 relabels from the resumed network
        lifecycle.start(tiny_config(*config, "train.epochs=1"), tmp_path / "part").train()
    resumed = lifecycle.resume(tmp_path / "part", tiny_config(*config))
    assert resumed.train()
    assert_same_state(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "full" / "checkpoint.pt"))


@pytest.mark.parametrize("setting, message", [
    ("method.clusters=0", "method.clusters: method 'sela': clusters must be >= 2, got 0"),
    ("method.clusters=1", "method.clusters: method 'sela': clusters must be >= 2, got 1"),
    ("method.clusters=100", "method.clusters: method 'sela': clusters must be at most the 64 "
                            "training images, got 100"),
    ("method.lam=0", "method.lam: method 'sela': lam must be >= 0.001, got 0"),
    ("method.lam=1e-320", "method.lam: method 'sela': lam must be >= 0.001, got 1e-320"),
    ("method.lam=1e9", "method.lam: method 'sela': lam must be <= 1000000.0, got 1000000000"),
    ("method.tol=1", "method.tol: method 'sela': tol must be < 1.0, got 1"),
    ("method.permute_every=3", "method.permute_every: method 'sela' has no option"),
])
def test_bad_options_cost_one_line_and_exit_2(natkit_cli, tiny_sets, tmp_path, setting, message):
    result = natkit_cli("run", "--method", "sela", "--out", str(tmp_path / "run"),
                        *tiny_sets(setting))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
