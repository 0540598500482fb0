"""natkit's pytest plugin: a tiny config and fixtures to test natkit and its plugins.

Installed with natkit (entry point ``pytest11``), so a plugin package's tests
get these fixtures without a conftest:

* ``natkit_host``: a fresh plugin host, with the installed entry points loaded
  (your plugin included), made natkit's host for one test;
* ``tiny_config(*overrides)``: a resolved config of a run that takes a second;
* ``natkit_run(*overrides)``: that run trained in this process; returns the run;
* ``natkit_cli(*args)``: the ``natkit`` command line in this process (typer's runner);
* ``natkit_process(*args)``: ``python -m natkit ARGS`` in a fresh process, as a user runs it;
* ``tiny_sets(*overrides)``: the tiny run as ``--set key=value`` arguments.

:data:`TINY`, :class:`StopAfter` and :func:`assert_same_state` are importable
for kill-and-resume tests. Nothing heavy is imported until a fixture is used,
so having natkit installed costs other projects' test runs nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from natkit.hookspecs import hookimpl

# A run small enough for a unit test: 64 shapes at 16 px, a narrow AlexNet, 2 epochs.
TINY: list[str] = [
    "data.num_train=64", "data.num_test=40", "data.image_size=16",
    "backbone.widths=[4,8,8,8,8]", "backbone.fc=[16]", "targets.dim=8",
    "train.batch_size=16", "train.epochs=2", "train.warmup_steps=2", "train.log_every=2",
    "eval.linear_iterations=20", "eval.mlp_epochs=3", "eval.mlp_hidden=16", "eval.knn_k=[1,3]",
    "eval.linear_weight_decay=[0.0001,0.01]", "eval.mlp_weight_decay=[0.001]",
    # NATKIT_TEST_DEVICE=cuda runs the same tiny runs on a GPU
    f"device={os.environ.get('NATKIT_TEST_DEVICE', 'cpu')}",
]

# Bit-exact resumes are promised with deterministic kernels (cuDNN's benchmark may pick
# different algorithms in another process): add this override to a resume test's runs.
EXACT = "deterministic=true"


class StopAfter:
    """A plugin that asks the run to stop after a given step, as Ctrl-C does."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def on_step_end(self, run: Any, metrics: dict[str, Any]) -> None:
        if run.step == self.step:
            run.request_stop()


def assert_same_state(a: Any, b: Any, path: str = "state") -> None:
    """Assert two checkpoints (nested dicts, lists, tensors) are equal, tensors bit for bit."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def assert_close_weights(a: Path, b: Path, device_type: str = "cpu") -> tuple[float, float]:
    """Assert two run directories' checkpoints hold the same parameter names and close tensors.

    For runs that should compute the same training up to float rounding (a speed switch
    such as channels_last or torch.compile). Returns the (rtol, atol) used, looser on
    CUDA, where convolutions round in TF32 and another layout picks other algorithms.
    """
    import torch

    from natkit.checkpoint import CHECKPOINT, load_checkpoint

    first = load_checkpoint(Path(a) / CHECKPOINT)["model"]
    second = load_checkpoint(Path(b) / CHECKPOINT)["model"]
    assert first.keys() == second.keys()
    rtol, atol = (1e-3, 1e-5) if device_type == "cpu" else (2e-2, 2e-3)
    for name in first:
        assert torch.allclose(first[name], second[name], rtol=rtol, atol=atol), name
    return rtol, atol


def tiny_args(*extra: str) -> list[str]:
    """The tiny run, then ``extra``, as ``--set key=value`` command-line arguments."""
    return [arg for text in [*TINY, *extra] for arg in ("--set", text)]


@pytest.fixture
def natkit_host() -> Iterator[Any]:
    """A fresh plugin host with the installed plugins loaded, as natkit's host for one test."""
    from natkit import plugins

    fresh = plugins.PluginHost(autoload=True)
    old = plugins.reset_host(fresh)
    yield fresh
    plugins.reset_host(old)


@pytest.fixture
def tiny_config(natkit_host: Any) -> Callable[..., Any]:
    """``tiny_config(*overrides)``: the tiny run's resolved config; later overrides win."""
    from natkit import config

    def make(*extra: str) -> Any:
        return config.build(overrides=[*TINY, *extra])

    return make


@pytest.fixture
def natkit_run(tiny_config: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    """``natkit_run(*overrides)``: train the tiny run in this process; returns the finished run."""
    from rich.console import Console

    from natkit import lifecycle

    count = 0

    def run(*extra: str) -> Any:
        nonlocal count
        count += 1
        the_run = lifecycle.start(tiny_config(*extra), tmp_path / f"run{count}",
                                  console=Console(stderr=True, quiet=True))
        lifecycle.execute(the_run, evaluate=False)
        return the_run

    return run


@pytest.fixture
def natkit_cli(natkit_host: Any) -> Callable[..., Any]:
    """``natkit_cli(*args)``: the natkit CLI in this process; returns typer's ``Result``."""
    from typer.testing import CliRunner

    from natkit.cli import app

    runner = CliRunner()

    def invoke(*args: str) -> Any:
        # exceptions propagate, so a bug shows its traceback instead of a bare exit code
        return runner.invoke(app, list(args), env={"COLUMNS": "200"}, terminal_width=200,
                             catch_exceptions=False)

    return invoke


@pytest.fixture
def natkit_process() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``natkit_process(*args)``: ``python -m natkit ARGS`` in a fresh process, plugins loaded."""
    from natkit.plugins import AUTOLOAD_ENV

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
        env["COLUMNS"] = "200"  # keep rich tables on one line per row
        env["OMP_NUM_THREADS"] = "1"  # tiny tensors: a second thread only spins
        return subprocess.run([sys.executable, "-m", "natkit", *args], env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def tiny_sets() -> Callable[..., list[str]]:
    """``tiny_sets(*overrides)``: the tiny run, then ``overrides``, as ``--set`` arguments."""
    return tiny_args
