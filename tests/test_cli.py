"""The command line: list, plugins, config, run, eval and resume, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from natkit.cli import app
from natkit.testing import TINY, tiny_args


def no_alexnet_options(*extra: str) -> list[str]:
    """The tiny run's --set options without its AlexNet ones, for another backbone."""
    return [arg for text in [*TINY, *extra] if not text.startswith("backbone.")
            for arg in ("--set", text)]

runner = CliRunner()


@pytest.mark.parametrize("kind, expected", [
    ("solvers", ["hungarian", "emd", "sinkhorn", "greedy"]),
    ("targets", ["sphere", "basis"]),
    ("preprocessors", ["sobel", "clean", "highpass"]),
    ("backbones", ["alexnet", "timm:<name>"]),
    ("datasets", ["shapes", "digits", "imagefolder", "shards", "cifar10", "stl10"]),
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


def test_export_gives_plain_weights_that_load_into_a_fresh_backbone(host, tmp_path):
    import torch

    import natkit
    from natkit.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["run", "--out", str(run_dir), "--no-eval", *tiny_args()]).exit_code \
        == 0
    result = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "bb.pt")])
    assert result.exit_code == 0, result.output
    weights = torch.load(tmp_path / "bb.pt", weights_only=True)
    assert not any(k.startswith(("backbone.", "head.", "preprocess.")) for k in weights)
    info = json.loads((tmp_path / "bb.pt.json").read_text())
    assert info["in_chans"] == 2 and info["backbone"] == "alexnet"
    fresh = natkit.create_backbone("alexnet", in_chans=2, image_size=16, widths=(4, 8, 8, 8, 8))
    fresh.load_state_dict(weights)  # strict: every key matches
    trained = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    torch.testing.assert_close(fresh.conv1[0].weight, trained["backbone.conv1.0.weight"])


def test_export_of_a_timm_backbone_loads_into_timm_and_torchvision(host, tmp_path):
    import timm
    import torch
    import torchvision

    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(run_dir), "--no-eval", "--backbone",
                                 "timm:resnet18", "--preprocess", "clean",
                                 *no_alexnet_options("data.image_size=32", "train.epochs=1")])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["export", str(run_dir), "-o", str(tmp_path / "r18.pt")]
                         ).exit_code == 0
    weights = torch.load(tmp_path / "r18.pt", weights_only=True)
    timm.create_model("resnet18", in_chans=3, num_classes=0).load_state_dict(weights)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(weights, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_export_of_a_directory_that_is_not_a_run(host, tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "is not a natkit run directory" in result.stderr
