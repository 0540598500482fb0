"""natkit-vmf as a user sees it: listed by the CLI, trained with, and resumed."""

from __future__ import annotations

import json

import torch


def test_natkit_list_targets_in_a_fresh_process_shows_vmf_from_the_plugin(natkit_process):
    result = natkit_process("list", "targets")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if " vmf " in line]
    assert len(rows) == 1, result.stdout
    assert "natkit-vmf" in rows[0] and "von Mises-Fisher" in rows[0]


def test_a_tiny_run_with_vmf_targets_trains_and_resumes(natkit_cli, tiny_sets, tmp_path):
    out = tmp_path / "run"
    sets = tiny_sets("targets.k=4", "targets.kappa=20", "method.permute_every=1")
    result = natkit_cli("run", "--targets", "vmf", "--no-eval", "--out", str(out), *sets)
    assert result.exit_code == 0, result.stderr
    assert "targets vmf (d=8)" in result.stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    saved = state["method"]["assignment"]["targets"]
    assert saved["class"] == "VMFTargets"
    assert (saved["dim"], saved["k"], saved["kappa"]) == (8, 4, 20.0)
    epochs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(0 < r["changed"] <= 1 for r in epochs)  # the targets were really reassigned
    # the checkpoint's target options (k and kappa included) must match on resume
    result = natkit_cli("run", "--resume", str(out), "--no-eval", "--set", "train.epochs=3")
    assert result.exit_code == 0, result.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 3
