"""Shared fixtures: an isolated plugin host, and small real data on disk."""

from __future__ import annotations

import os

import pytest
import torch

from natkit import plugins

# The suite must not depend on plugins that happen to be installed alongside natkit.
os.environ.setdefault(plugins.AUTOLOAD_ENV, "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def host():
    """A fresh plugin host (built-ins only) installed as natkit's host for one test."""
    fresh = plugins.PluginHost(autoload=False)
    old = plugins.reset_host(fresh)
    yield fresh
    plugins.reset_host(old)


# A run small enough for a unit test: 64 shapes at 16 px, a narrow AlexNet, 2 epochs.
TINY = [
    "data.num_train=64", "data.num_test=40", "data.image_size=16",
    "backbone.widths=[4,8,8,8,8]", "backbone.fc=[16]", "targets.dim=8",
    "train.batch_size=16", "train.epochs=2", "train.warmup_steps=2", "train.log_every=2",
    "eval.linear_iterations=20", "eval.mlp_epochs=3", "eval.mlp_hidden=16", "eval.knn_k=[1,3]",
    "eval.linear_weight_decay=[0.0001,0.01]", "eval.mlp_weight_decay=[0.001]",
    # NATKIT_TEST_DEVICE=cuda runs the same tiny runs on a GPU (the device check of benchmarks/gpu.sh)
    f"device={os.environ.get('NATKIT_TEST_DEVICE', 'cpu')}",
]


@pytest.fixture
def tiny_config(host):
    """Build a tiny, resolved config; extra ``key=value`` overrides win."""
    from natkit import config

    def make(*extra: str) -> config.Config:
        return config.build(overrides=[*TINY, *extra])

    return make
