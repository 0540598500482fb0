"""natkit's own suite: the fixtures of natkit.testing, with a host of built-ins only."""

from __future__ import annotations

import os

import pytest
import torch

from natkit import plugins

# The suite must not depend on plugins that happen to be installed alongside natkit.
os.environ.setdefault(plugins.AUTOLOAD_ENV, "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _index_cache(tmp_path_factory):
    """Image-folder indexes go to a folder of the session, not the user's ~/.cache/natkit."""
    with pytest.MonkeyPatch.context() as mp:  # os.environ: subprocesses inherit it too
        mp.setenv("NATKIT_CACHE_DIR", str(tmp_path_factory.mktemp("natkit-cache")))
        yield


@pytest.fixture(autouse=True)
def _deterministic_mode_stays_in_its_test():
    """A run with `deterministic: true` switches torch's process-wide mode: undo it after."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def full_float32(monkeypatch):
    """CUDA convolutions and matmuls in full float32, not TF32: layouts then round alike."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)


@pytest.fixture
def natkit_host():
    """A fresh plugin host (built-ins only) installed as natkit's host for one test."""
    fresh = plugins.PluginHost(autoload=False)
    old = plugins.reset_host(fresh)
    yield fresh
    plugins.reset_host(old)


@pytest.fixture
def host(natkit_host):
    """The test's plugin host (built-ins only)."""
    return natkit_host
