"""natkit-lap as a user sees it: listed by the CLI and usable in a run."""

from __future__ import annotations

import json


def test_a_fresh_natkit_process_finds_the_plugin(natkit_process):
    result = natkit_process("plugins")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "natkit-lap" in line]
    assert len(rows) == 1 and " ok " in rows[0] and "0.1.0" in rows[0], result.stdout


def test_natkit_list_solvers_shows_lapjv_from_the_plugin(natkit_cli):
    result = natkit_cli("list", "solvers")
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if " lapjv " in line]
    assert len(rows) == 1, result.stdout
    assert "natkit-lap" in rows[0] and "Jonker-Volgenant" in rows[0]


def test_a_tiny_run_with_the_lapjv_solver_writes_results(natkit_cli, tiny_sets, tmp_path):
    out = tmp_path / "run"
    result = natkit_cli("run", "--solver", "lapjv", "--out", str(out),
                        *tiny_sets("eval.plots=false", "eval.baseline=false"))
    assert result.exit_code == 0, result.stderr
    assert "solver lapjv" in result.stderr
    assert "name: lapjv" in (out / "config.yaml").read_text()
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"linear", "mlp", "knn"}
    assert all(0.0 <= probe["trained"] <= 1.0 for probe in results.values())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    # epoch 0 reassigns (method.permute_every defaults to 3): lapjv really ran inside training
    assert len(epochs) == 2 and 0 < epochs[0]["changed"] <= 1 and epochs[1]["changed"] is None
