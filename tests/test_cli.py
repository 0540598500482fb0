"""The command line: list, plugins, config, run, eval and resume, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from natkit.cli import app
from tests.conftest import TINY

runner = CliRunner()


def tiny_args(*extra: str) -> list[str]:
    args = []
    for text in [*TINY, *extra]:
        args += ["--set", text]
    return args


@pytest.mark.parametrize("kind, expected", [
    ("solvers", ["hungarian", "emd", "sinkhorn", "greedy"]),
    ("targets", ["sphere", "basis"]),
    ("preprocessors", ["sobel", "clean", "highpass"]),
    ("backbones", ["alexnet", "timm:<name>"]),
    ("datasets", ["shapes", "digits", "imagefolder", "cifar10", "stl10"]),
])
def test_list_shows_every_component_with_its_plugin(host, kind, expected):
    result = runner.invoke(app, ["list", kind], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in expected:
        assert name in result.output
    assert "natkit" in result.output


def test_list_pattern_and_bad_kind(host):
    result = runner.invoke(app, ["list", "solvers", "s*"], terminal_width=200)
    assert "sinkhorn" in result.output and "hungarian" not in result.output
    result = runner.invoke(app, ["list", "widgets"])
    assert result.exit_code == 2


def test_version_and_config(host):
    assert runner.invoke(app, ["--version"]).output.startswith("natkit ")
    result = runner.invoke(app, ["config", "--set", "train.lr=0.3"])
    assert result.exit_code == 0 and "lr: 0.3" in result.output


def test_run_eval_and_resume_end_to_end(host, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(out), "--epochs", "1", *tiny_args()],
                           terminal_width=120)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"linear", "mlp", "knn"}
    assert "random init" in result.stdout and "linear" in result.stdout
    again = runner.invoke(app, ["eval", str(out)])
    assert again.exit_code == 0 and json.loads((out / "results.json").read_text()) == results
    more = runner.invoke(app, ["run", "--resume", str(out), "--epochs", "2", "--no-eval"])
    assert more.exit_code == 0, more.output
    assert "resuming" in more.stderr
    changed = runner.invoke(app, ["run", "--resume", str(out), "--solver", "greedy"])
    assert changed.exit_code == 2 and "solver.name differs" in changed.stderr


def test_the_console_script_is_installed_and_fails_cleanly():
    result = subprocess.run([sys.executable, "-m", "natkit", "run", "--targets", "spheres"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: unknown targets 'spheres' (did you mean 'sphere'?); "
                                     "valid: basis, sphere")
