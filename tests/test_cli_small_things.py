"""What a first-time user met at the command line (issue 24, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from natkit.cli import app
from natkit.kinds import TABLE
from natkit.testing import tiny_args

runner = CliRunner()


def test_plain_natkit_list_lists_the_kinds_with_their_counts(natkit_host):
    result = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in result.output.splitlines() if line.startswith("│")]
    for kind in TABLE:
        count = len(natkit_host.registry(kind.name).names())
        assert [kind.plural, str(count), f"natkit list {kind.plural}"] in rows, rows
    assert rows[-1][0] == "presets" and int(rows[-1][1]) >= 3


def test_an_unknown_kind_names_the_presets_among_the_valid_ones(natkit_host):
    result = runner.invoke(app, ["list", "solverz"])
    assert result.exit_code == 2
    assert "presets" in result.stderr and "did you mean 'solver'" in result.stderr


def test_component_descriptions_are_plain_text(natkit_host):
    result = runner.invoke(app, ["list", "datasets"], env={"COLUMNS": "300"})
    described = [line for line in result.output.splitlines() if "cifar10" in line
                 or "stl10" in line]
    assert described and not any("``" in line or ":class:" in line for line in described)


def test_output_to_a_pipe_is_not_wrapped(natkit_host, tmp_path):
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["run", "--out", str(run_dir), "--no-eval",
                               *tiny_args("train.epochs=1")]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["NATKIT_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    out = tmp_path / "a-rather-long-folder-name-for-the-exported-weights" / "backbone.pt"
    done = subprocess.run([sys.executable, "-m", "natkit", "export", str(run_dir), "--out",
                           str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    loads = [line for line in done.stderr.splitlines() if line.startswith("load it with: ")]
    assert len(loads) == 2, done.stderr  # the backbone's recipe and the RGB encoder's, unbroken
    assert loads[0].endswith("weights_only=True))") and loads[1].endswith(".rgb.safetensors')")
