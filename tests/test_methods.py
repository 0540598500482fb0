"""The Method interface: a plugin's method gets the same loop, checkpoint and resume as NAT."""

from __future__ import annotations

from typing import Annotated

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import natkit
from natkit import engine, lifecycle
from natkit.checkpoint import load_checkpoint, read_metrics
from natkit.errors import ConfigError
from natkit.methods import Method, MethodContext, StepLoss
from natkit.testing import EXACT, StopAfter, assert_same_state
from natkit.values import Bounds


class Prototypes(Method):
    """Cross-entropy against learned prototypes, relabelled at each epoch's start (a test method)."""

    def __init__(self, *, context: MethodContext, width: Annotated[int, Bounds(ge=1)] = 6) -> None:
        self.head_dim = width
        self.prototypes = nn.Linear(width, 3, bias=False)  # trained with the network
        self.labels = torch.arange(context.num_images) % 3
        self.labelled_epoch = -1
        self.calls: list[tuple[int, int]] = []  # (epoch, step) of each start_epoch

    def modules(self) -> nn.Module:
        return self.prototypes

    def start_epoch(self, epoch, run):
        self.calls.append((epoch, run.step))
        if epoch == self.labelled_epoch:
            return None  # resumed inside an epoch already labelled
        with torch.no_grad():
            self.labels = self.prototypes(run.outputs()).argmax(1).cpu()
        self.labelled_epoch = epoch
        return {"changed": 0.5}

    def loss(self, outputs, batch):
        logits = self.prototypes(F.normalize(outputs, dim=1)) * 10
        return StepLoss(F.cross_entropy(logits, self.labels[batch.indices].to(outputs.device)))

    def state_dict(self):
        return {"labels": self.labels, "labelled_epoch": self.labelled_epoch}

    def load_state_dict(self, state):
        self.labels, self.labelled_epoch = state["labels"], int(state["labelled_epoch"])


class PrototypesPlugin:
    @natkit.hookimpl
    def register_methods(self, register):
        register("prototypes", Prototypes)
        register("broken", lambda *, context: object())


@pytest.fixture
def with_plugin(host):
    host.register(PrototypesPlugin(), name="prototypes-plugin")
    return host


def test_a_plugin_method_is_listed_and_its_options_are_checked(with_plugin, tiny_config):
    assert natkit.list_components("methods") == ["broken", "nat", "prototypes", "supervised"]
    assert tiny_config("method=prototypes").method == {"name": "prototypes", "width": 6}
    with pytest.raises(ConfigError, match="method.width: method 'prototypes': width must be >= 1"):
        tiny_config("method=prototypes", "method.width=0")
    with pytest.raises(ConfigError, match="method.permute_every: method 'prototypes' has no option"):
        tiny_config("method=prototypes", "method.permute_every=2")


def test_a_factory_that_builds_no_method_is_refused(with_plugin, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="method: 'broken' built a object, not a natkit"):
        engine.Run(tiny_config("method=broken"), tmp_path)


def test_the_methods_modules_join_the_optimizer_and_the_checkpoint(with_plugin, tiny_config,
                                                                   tmp_path):
    run = lifecycle.start(tiny_config("method=prototypes"), tmp_path / "run")
    assert run.model.head[-1].out_features == 6 and not run.model.normalize
    before = run.method.prototypes.weight.detach().clone()
    assert run.train()
    after = run.method.prototypes.weight.detach()
    assert not torch.equal(before, after)  # trained: its parameters are in the optimizer
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert torch.equal(state["method_modules"]["weight"], after)
    assert state["method"]["labelled_epoch"] == 1
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["changed"] for r in epochs] == [0.5, 0.5]  # start_epoch's statistics are counted


def test_a_plugin_method_resumes_bit_exactly_and_prepares_each_epoch_once(with_plugin,
                                                                          tiny_config, tmp_path):
    config = ("method=prototypes", "train.epochs=3", EXACT)
    full = lifecycle.start(tiny_config(*config), tmp_path / "full")
    full.train()
    assert full.method.calls == [(0, 0), (1, 4), (2, 8)]
    with_plugin.register(StopAfter(step=6), name="stopper")
    part = lifecycle.start(tiny_config(*config), tmp_path / "part")
    assert part.train() is False
    with_plugin.unregister("stopper")
    resumed = lifecycle.resume(tmp_path / "part")
    resumed.train()
    # called again when the run resumed inside epoch 1, which the method's state had labelled
    assert resumed.method.calls == [(1, 6), (2, 8)]
    assert_same_state(load_checkpoint(tmp_path / "part" / "checkpoint.pt"),
                      load_checkpoint(tmp_path / "full" / "checkpoint.pt"))
    # start_epoch's statistics reach each epoch's record, the resumed epoch's included
    for run in ("full", "part"):
        epochs = [r for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == "epoch"]
        assert [r.get("method") for r in epochs] == [{"changed": 0.5}] * 3, run


def test_hooks_get_one_live_read_only_view_of_the_run(host, tiny_config, tmp_path):
    seen = []

    class Watcher:
        @natkit.hookimpl
        def on_step_end(self, run, metrics):
            seen.append((run, run.step, run.epoch, run.num_images))

    host.register(Watcher(), name="watcher")
    run = lifecycle.start(tiny_config("train.epochs=1"), tmp_path / "run")
    run.train()
    assert len({id(view) for view, *_ in seen}) == 1 and seen[0][0] is run.view()
    assert [step for _, step, _, _ in seen] == [1, 2, 3, 4]
    assert {n for *_, n in seen} == {64}
    with pytest.raises(AttributeError):
        seen[0][0].step = 0
    outputs = run.view().outputs()
    assert outputs.shape == (64, 8) and run.model.training  # eval mode only while computing
    torch.testing.assert_close(outputs.norm(dim=1), torch.ones(64))  # NAT normalises
