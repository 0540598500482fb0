"""Fixtures: natkit with plugin autoloading on, and tiny real runs through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from natkit import plugins
from natkit.cli import app

# One thread: these tensors are small, and on a busy machine a second OpenMP thread spinning
# for a core makes every torch call many times slower instead of faster.
torch.set_num_threads(1)

# A run that takes seconds: 64 shapes at 16 px, a narrow AlexNet, 2 epochs (natkit's own TINY).
TINY = [
    "data.num_train=64", "data.num_test=40", "data.image_size=16",
    "backbone.widths=[4,8,8,8,8]", "backbone.fc=[16]", "targets.dim=8",
    "train.batch_size=16", "train.epochs=2", "train.warmup_steps=2", "train.log_every=2",
    "eval.linear_iterations=20", "eval.mlp_epochs=3", "eval.mlp_hidden=16", "eval.knn_k=[1,3]",
    "eval.linear_weight_decay=[0.0001,0.01]", "eval.mlp_weight_decay=[0.001]",
    "device=cpu",
]


@pytest.fixture
def host(monkeypatch):
    """A fresh plugin host that discovers installed entry points, installed as natkit's host."""
    # natkit's own suite turns autoloading off; these tests are about the entry point
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    fresh = plugins.PluginHost()
    old = plugins.reset_host(fresh)
    yield fresh
    plugins.reset_host(old)


@pytest.fixture
def natkit_cli(host):
    """``natkit_cli(*args)`` runs the natkit CLI in this process (typer's CliRunner)."""
    runner = CliRunner()

    def invoke(*args: str):
        # exceptions propagate, so a bug shows its traceback instead of a bare exit code
        return runner.invoke(app, list(args), env={"COLUMNS": "200"}, terminal_width=200,
                             catch_exceptions=False)

    return invoke


@pytest.fixture
def natkit_process():
    """``natkit_process(*args)`` runs ``python -m natkit ARGS`` in a fresh process, as a user would."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != plugins.AUTOLOAD_ENV}
        env["COLUMNS"] = "200"  # keep rich tables on one line per row
        env["OMP_NUM_THREADS"] = "1"  # as in this process, see above
        return subprocess.run([sys.executable, "-m", "natkit", *args], env=env,
                              capture_output=True, text=True, timeout=300)

    return run


@pytest.fixture
def tiny_sets():
    """``tiny_sets(*extra)``: the TINY overrides, then ``extra``, as ``--set key=value`` arguments."""

    def make(*extra: str) -> list[str]:
        return [arg for item in [*TINY, *extra] for arg in ("--set", item)]

    return make
