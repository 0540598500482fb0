"""Smoke tests of the benchmark harness: every table on a minimal grid, so it cannot rot."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.__main__ import app
from benchmarks.harness import Measurement, Stat, measure, verdict
from benchmarks.tables import TABLES, Claim

runner = CliRunner()

# one epoch of 64 tiny images per run (targets.dim=32 so that basis k=32 is valid)
MINIMAL = ["data.num_train=64", "data.num_test=40", "data.image_size=16",
           "backbone.widths=[4,8,8,8,8]", "targets.dim=32", "train.batch_size=16",
           "train.epochs=1", "eval.linear_iterations=10", "eval.knn_k=[1,3]", "device=cpu"]


def sets(texts):
    return [a for t in texts for a in ("--set", t)]


def test_every_table_and_the_speed_suite_run_and_write_results(host, tmp_path):
    report = tmp_path / "RESULTS.md"
    result = runner.invoke(app, ["all", "--seeds", "1", "--quick-speed", *sets(MINIMAL),
                                 "--out", str(tmp_path / "results"),
                                 "--runs", str(tmp_path / "runs"), "--results", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    for table in TABLES.values():
        if table.needs:  # a plugin's component: natkit's suite runs with the built-ins only
            assert f"[{table.key}] skipped: needs {table.needs[0][0]}" in result.output
            assert "pip install -e plugins/" in result.output
            continue
        assert table.title in text
        folder = tmp_path / "results" / "tiny"
        assert (folder / f"{table.key}.png").read_bytes()[:4] == b"\x89PNG"
        rows = list(csv.DictReader((folder / f"{table.key}.csv").read_text().splitlines()))
        labels = {r["setting"] for r in rows}
        assert labels == {s.label for s in table.settings}
    assert "python -m benchmarks all" in text and "machine:" in text
    assert "33.5 (u)" in text  # the paper's reported values stand beside the measurements


def test_finished_runs_are_reused(host, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a committed benchmarks/RESULTS.md would be
    committed = tmp_path / "benchmarks" / "RESULTS.md"
    committed.parent.mkdir()
    committed.write_text(f"# Results\n\n### {TABLES['solver'].title}\n\nmeasured\n\n![x](x.png)\n")
    args = ["solver", "--seeds", "1", *sets(MINIMAL), "--out", str(tmp_path / "r"),
            "--runs", str(tmp_path / "runs")]
    assert runner.invoke(app, args).exit_code == 0
    # results written elsewhere (--out) never rewrite the committed RESULTS.md
    assert "measured" in committed.read_text()
    runs = sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 4
    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == runs


def test_a_reused_curve_keeps_its_epochs_as_numbers(host, tmp_path):
    args = (TABLES["epochs"], "nat", (), "tiny", 0, (*MINIMAL, "train.epochs=2"), tmp_path)
    first = measure(*args)
    again = measure(*args)  # read back from the run's record
    assert list(first.curve) == list(again.curve) == [0, 1, 2]
    assert again.curve == first.curve and again.trained == first.trained


def test_the_paper_scale_starts_on_an_image_folder(host, tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / c / f"{i}.png")
    result = runner.invoke(app, [
        "epochs", "--scale", "paper", "--seeds", "1",
        *sets([f"data.root={tmp_path / 'data'}", "train.epochs=1", "train.batch_size=4",
               "train.num_workers=0", "eval.knn_k=[1]", "eval.linear_iterations=5",
               "device=cpu"]),
        "--out", str(tmp_path / "results"), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "results" / "paper" / "epochs.csv").read_text()
                               .splitlines()))
    assert {r["epoch"] for r in rows} == {"0", "1"}


def test_unknown_names_exit_2(host):
    result = runner.invoke(app, ["tabel"])
    assert result.exit_code == 2 and "unknown table 'tabel'" in result.stderr


def m(label, seed, value):
    return Measurement(label, seed, {"linear": value}, {}, 1.0, "")


def test_verdicts_follow_the_two_standard_error_rule():
    better = [m("a", s, 0.80 + 0.01 * s) for s in range(3)] + \
             [m("b", s, 0.60 + 0.01 * s) for s in range(3)]
    assert verdict(Claim("", "greater", "a", "b", "linear"), better).startswith("reproduced")
    assert verdict(Claim("", "greater", "b", "a", "linear"), better).startswith("contradicted")
    assert verdict(Claim("", "on_par", "a", "b", "linear"), better).startswith("not reproduced")
    noisy = [m("a", s, v) for s, v in enumerate([0.5, 0.7, 0.6])] + \
            [m("b", s, v) for s, v in enumerate([0.55, 0.65, 0.6])]
    assert "within noise" in verdict(Claim("", "greater", "a", "b", "linear"), noisy)
    assert "too noisy to tell" in verdict(Claim("", "on_par", "a", "b", "linear"), noisy)
    tight = [m("a", s, v) for s, v in enumerate([0.600, 0.605, 0.610])] + \
            [m("b", s, v) for s, v in enumerate([0.602, 0.607, 0.603])]
    assert verdict(Claim("", "on_par", "a", "b", "linear"), tight).startswith("reproduced")
    assert "one seed" in verdict(Claim("", "greater", "a", "b", "linear"), better[:1] + better[3:4])


def test_stats_are_mean_and_sample_std():
    s = Stat.of([0.5, 0.7, 0.6])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n == 3
    assert str(s) == "60.0 ± 10.0"


def test_running_one_table_refreshes_its_section_of_results_md(host, tmp_path):
    from benchmarks.report import replace_table_section

    title = TABLES["solver"].title
    report = tmp_path / "RESULTS.md"
    report.write_text(f"# Results\n\n### {title}\n\nstale numbers\n\n![{title}](old.png)\n\n"
                      "### Speed: the assignment solvers and the cost of NAT\n\nspeed\n")
    result = runner.invoke(app, ["solver", "--seeds", "1", *sets(MINIMAL),
                                 "--out", str(tmp_path / "r"), "--runs", str(tmp_path / "runs"),
                                 "--results", str(report)])
    assert result.exit_code == 0, result.output
    text = report.read_text()
    assert "stale numbers" not in text and text.count(f"### {title}") == 1
    assert "| hungarian |" in text and text.endswith("speed\n")  # the rest stays as it was
    added = replace_table_section(text, "New table", "### New table\n\nx\n\n![New](n.png)\n")
    assert added.index("### New table") < added.index("### Speed")
