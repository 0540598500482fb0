"""Smoke tests of the benchmark harness: every table on a minimal grid, so it cannot rot."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from benchmarks import choices, harness, records, report, results_page
from benchmarks.__main__ import app
from benchmarks.harness import measure
from benchmarks.records import Chosen, Measurement
from benchmarks.stats import (
    EQUIVALENCE_MARGIN,
    Stat,
    assess,
    claim_values,
    decide,
    holm,
    paired,
    seeds_to_decide,
)
from benchmarks.tables import (
    BASIS_32,
    RANDOM_INIT,
    SCALES,
    SPHERE,
    TABLES,
    VALIDATION,
    Choice,
    Claim,
    Setting,
)
from natkit import builders
from natkit import config as cfg
from natkit.checkpoint import CHECKPOINT
from natkit.errors import ConfigError

runner = CliRunner()

# one epoch of 64 tiny images per run (targets.dim as each table sets it)
MINIMAL = ["data.num_train=64", "data.num_test=40", "data.image_size=16",
           "backbone.widths=[4,8,8,8,8]", "train.batch_size=16",
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
    # the supervised tables chose their step sizes on validation data, and trained with them
    folder = tmp_path / "results" / "tiny"
    made, validation = records.read_choices(folder / "loss.choices.csv")
    assert {c.setting for c in made} == {"softmax", "square"} and validation == "data.seed=1"
    assert "`train.lr` was chosen for each setting" in text
    assert not (folder / "solver.choices.csv").exists()
    stored = [json.loads(r.read_text()) for r in (tmp_path / "runs").rglob(records.RECORD)]
    square = next(c for c in made if c.setting == "square")
    measured = [r for r in stored if r["setting"] == "square"
                and builders.read_run_config(harness.Path(r["run_dir"])).data["seed"] == 0]
    assert {builders.read_run_config(harness.Path(r["run_dir"])).train.lr
            for r in measured} == {float(square.value)}


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


@pytest.fixture
def seeds_asked(monkeypatch):
    """The seeds each table is asked to run, with nothing trained or written."""
    asked = {}

    def run_table(table, scale, seeds, *rest):
        asked[table.key] = seeds
        return []
    monkeypatch.setattr("benchmarks.__main__.run_table", run_table)
    monkeypatch.setattr("benchmarks.records.write_csv", lambda measured, path: None)
    return asked


def test_a_table_capped_in_seeds_runs_no_more_than_its_cap(tmp_path, seeds_asked):
    asked = seeds_asked
    args = ["dim", "period", "--seeds", "5", "--out", str(tmp_path / "r"),
            "--runs", str(tmp_path / "runs")]
    assert runner.invoke(app, args).exit_code == 0
    assert TABLES["dim"].max_seeds == 3 and TABLES["period"].max_seeds is None
    assert asked == {"dim": 3, "period": 5}
    asked.clear()
    assert runner.invoke(app, [*args[:3], "2", *args[4:]]).exit_code == 0
    assert asked == {"dim": 2, "period": 2}  # a cap never adds seeds


def test_a_table_spends_its_own_seeds_only_when_seeds_are_not_given(tmp_path, seeds_asked):
    asked = seeds_asked
    folders = ["--out", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")]
    assert TABLES["preprocess_nat"].tiny_seeds == 8 and TABLES["period"].tiny_seeds is None
    assert runner.invoke(app, ["preprocess_nat", "period", *folders]).exit_code == 0
    assert asked == {"preprocess_nat": 8, "period": 4}
    asked.clear()  # --seeds is every table's, a table's own default notwithstanding
    assert runner.invoke(app, ["preprocess_nat", "--seeds", "2", *folders]).exit_code == 0
    assert asked == {"preprocess_nat": 2}


def test_supervised_tables_train_with_the_supervised_recipe_of_their_scale():
    def built(key, scale, setting=0):
        table = TABLES[key]
        return cfg.build(overrides=harness.overrides_for(
            table, scale, table.settings[setting].overrides, 0, ()))

    nat, softmax = built("preprocess_nat", "tiny", 1), built("loss", "tiny")
    assert nat.method["name"] == "nat" and softmax.method["name"] == "supervised"
    # twice the NAT runs' epochs of the same images, in quarter batches (about twice the
    # compute, nearly nine times the steps), the step size annealed to about a tenth by the end
    assert softmax.data == nat.data and softmax.train.epochs == 2 * nat.train.epochs
    assert softmax.train.batch_size * 4 == nat.train.batch_size
    steps = softmax.train.epochs * (softmax.data["num_train"] // softmax.train.batch_size)
    assert steps == 744
    decay = 1 + softmax.train.lr_gamma * (steps - softmax.train.warmup_steps)
    assert 8 < decay < 12
    assert built("preprocess", "tiny", 2).train == softmax.train  # Tables 1 and 2 share it
    # at the paper scale, the authors' supervised recipe (natkit's paper-supervised preset)
    paper = built("loss", "paper")
    preset = cfg.build(preset="paper-supervised")
    assert paper.train == preset.train and paper.method == preset.method
    assert built("preprocess_nat", "paper", 1).train != paper.train


def test_runs_remember_the_code_that_trained_them(host, tmp_path):
    records.code_fingerprint.cache_clear()
    args = ["solver", "--seeds", "1", *sets(MINIMAL), "--out", str(tmp_path / "r"),
            "--runs", str(tmp_path / "runs")]
    assert runner.invoke(app, args).exit_code == 0
    kept = sorted((tmp_path / "runs" / "tiny").glob(f"*/{records.RECORD}"))
    assert len(kept) == 4
    assert {json.loads(r.read_text())["code"] for r in kept} == {records.code_fingerprint()}
    # a run trained by other code is still reused, and said to be
    stored = json.loads(kept[0].read_text())
    kept[0].write_text(json.dumps({**stored, "code": "0123456789ab"}))
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("[trained by other code") == 1
    assert "[trained by other code: 0123456789ab]" in again.output
    from benchmarks.__main__ import _code_summary
    current = records.code_fingerprint()
    assert current in _code_summary({"a": current, "b": current})
    mixed = _code_summary({"a": current, "b": current, "c": "0123456789ab", "d": ""})
    assert "3 versions of the code" in mixed and f"{current} (2 runs)" in mixed
    assert "not recorded (1 runs)" in mixed and "Delete benchmarks/runs/" in mixed


def test_the_code_fingerprint_covers_the_plugins_source(host, tmp_path, monkeypatch):
    package = tmp_path / "fingerprinted_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("fingerprinted_plugin")
    records.code_fingerprint.cache_clear()
    without = records.code_fingerprint()
    host.register(module, name="fingerprinted")
    records.code_fingerprint.cache_clear()
    first = records.code_fingerprint()
    (package / "__init__.py").write_text("VALUE = 2\n")
    records.code_fingerprint.cache_clear()
    assert len({without, first, records.code_fingerprint()}) == 3
    records.code_fingerprint.cache_clear()
    monkeypatch.delitem(__import__("sys").modules, "fingerprinted_plugin")


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


def test_discrete_targets_are_the_basis_of_r_k_and_rows_say_k_and_d(host):
    """The paper's discrete ablation: k one-hot targets in R^k, no output left without one."""
    basis = 0
    for setting in TABLES["targets"].settings:
        targets = cfg.build(overrides=[*SCALES["tiny"], *setting.overrides]).targets
        assert f"d={targets['dim']}" in setting.label
        if targets["name"] == "basis":
            basis += 1
            assert targets["k"] == targets["dim"] and f"k={targets['k']}" in setting.label
    assert basis == 2


def test_a_table_of_evaluations_re_evaluates_the_base_runs_without_training(host, tmp_path,
                                                                          monkeypatch):
    table = TABLES["layers"]
    first, second = table.settings[:2]
    evaluated = []
    evaluate = harness.evaluate

    def spy(config, state, **kwargs):
        evaluated.append(config)
        return evaluate(config, state, **kwargs)

    monkeypatch.setattr(harness, "evaluate", spy)
    conv1 = measure(table, first.label, first.overrides, "tiny", 0, tuple(MINIMAL), tmp_path)
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1  # the base recipe's run, the one the other tables share
    assert (runs[0] / records.RECORD).is_file()  # measured as itself too
    trained_at = (runs[0] / CHECKPOINT).stat().st_mtime_ns
    conv2 = measure(table, second.label, second.overrides, "tiny", 0, tuple(MINIMAL), tmp_path)
    assert list(tmp_path.iterdir()) == runs
    assert (runs[0] / CHECKPOINT).stat().st_mtime_ns == trained_at
    assert len(list((runs[0] / records.REEVALUATED).glob("*.json"))) == 2
    assert set(conv1.trained) == set(conv1.random_init) == set(conv2.trained) == {"linear"}
    assert [(c.eval.layer, c.eval.tap_pool) for c in evaluated] == [("conv1", 6), ("conv2", 3)]
    trained_with = builders.read_run_config(runs[0])
    assert all(cfg.difference(trained_with.to_dict(), c.to_dict()) ==
               ["eval.layer", "eval.probes", "eval.tap_pool"] for c in evaluated)
    monkeypatch.setattr(harness, "evaluate", None)  # read back, not evaluated again
    again = measure(table, first.label, first.overrides, "tiny", 0, tuple(MINIMAL), tmp_path)
    assert again.trained == conv1.trained and again.random_init == conv1.random_init


def test_a_table_of_evaluations_changes_only_the_evaluation(host, tmp_path):
    table = replace(TABLES["layers"], settings=(Setting("faster", ("train.lr=0.1",)),))
    with pytest.raises(ValueError, match="may only change eval"):
        measure(table, "faster", ("train.lr=0.1",), "tiny", 0, tuple(MINIMAL), tmp_path)


def test_a_record_of_an_older_protocol_is_evaluated_again_not_retrained(host, tmp_path):
    table, setting = TABLES["solver"], TABLES["solver"].settings[0]
    args = (table, setting.label, setting.overrides, "tiny", 0, tuple(MINIMAL), tmp_path)
    first = measure(*args)
    run = next(tmp_path.iterdir())
    record = json.loads((run / records.RECORD).read_text())
    assert record["protocol"] == records.PROTOCOL
    old = {k: v for k, v in record.items() if k != "protocol"}  # as written before protocols
    old["trained"] = {"linear": 0.0, "knn": 0.0}
    (run / records.RECORD).write_text(json.dumps(old))
    trained_at = (run / CHECKPOINT).stat().st_mtime_ns
    again = measure(*args)
    assert again.trained == first.trained and again.seconds == pytest.approx(first.seconds)
    assert (run / CHECKPOINT).stat().st_mtime_ns == trained_at
    assert json.loads((run / records.RECORD).read_text())["protocol"] == records.PROTOCOL


def test_unknown_names_exit_2(host):
    result = runner.invoke(app, ["tabel"])
    assert result.exit_code == 2 and "unknown table 'tabel'" in result.stderr


def m(label, seed, value, base=None):
    return Measurement(label, seed, {"linear": value}, {} if base is None else {"linear": base},
                       1.0, "")


# ---------------------------------------------------------------- paired statistics


def test_paired_interval_and_p_match_a_hand_computed_case():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) on 2 degrees of freedom,
    # whose CDF is 1/2 + t / (2 sqrt(t^2 + 2)); the 97.5% quantile of t(2) is 4.302653
    test = paired([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])
    assert test.df == 2 and test.n == 3
    assert test.mean == pytest.approx(2.0) and test.sd == pytest.approx(1.0)
    t = 2 * math.sqrt(3)
    assert test.p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)  # 0.074180
    half = 4.302652729749464 / math.sqrt(3)  # with 3 degrees of freedom it would be 3.182
    assert (test.low, test.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=12))
def test_paired_agrees_with_scipy(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    diffs = np.subtract(a, b)
    if np.std(diffs) < 1e-6:
        return  # no spread: scipy's t is undefined there
    test = paired(a, b)
    ref = stats.ttest_rel(a, b)
    assert test.df == ref.df == len(a) - 1
    assert test.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    ci = ref.confidence_interval(0.95)
    assert (test.low, test.high) == pytest.approx((ci.low, ci.high), rel=1e-6, abs=1e-9)
    # TOST: the larger of the two one-sided p-values against -margin and +margin
    lower = stats.ttest_1samp(diffs, -EQUIVALENCE_MARGIN, alternative="greater").pvalue
    upper = stats.ttest_1samp(diffs, EQUIVALENCE_MARGIN, alternative="less").pvalue
    assert test.p_equivalent == pytest.approx(max(lower, upper), rel=1e-6, abs=1e-12)


def test_paired_edge_cases():
    one = paired([0.5], [0.4])
    assert one.n == 1 and math.isnan(one.p) and decide(one, math.nan, math.nan).startswith("too")
    same = paired([0.6, 0.7, 0.5], [0.6, 0.7, 0.5])  # identical runs (the two exact solvers)
    assert same.p == 1.0 and same.p_equivalent == 0.0 and (same.low, same.high) == (0.0, 0.0)
    shifted = paired([0.7, 0.8, 0.6], [0.6, 0.7, 0.5])  # the same gain on every seed
    assert shifted.p == 0.0 and shifted.p_equivalent == 1.0
    with pytest.raises(ValueError):
        paired([0.1, 0.2], [0.1])


def test_holm_matches_hand_computed_cases():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    nan = holm([0.01, math.nan])
    assert nan[0] == pytest.approx(0.01) and math.isnan(nan[1])
    # two comparisons, each with a difference and an equivalence p-value: counted once each
    assert holm([0.01, 0.9, 0.02, 0.8], groups=[0, 0, 1, 1]) == pytest.approx(
        [0.02, 1.0, 0.04, 1.0])
    assert holm([0.01, 0.9, 0.02, 0.8]) == pytest.approx([0.04, 1.0, 0.06, 1.0])


def test_decisions():
    sure = paired([0.80, 0.82, 0.81, 0.83], [0.60, 0.61, 0.62, 0.60])
    assert decide(sure, sure.p, sure.p_equivalent) == "better"
    flip = paired([0.60, 0.61, 0.62, 0.60], [0.80, 0.82, 0.81, 0.83])
    assert decide(flip, flip.p, flip.p_equivalent) == "worse"
    close = paired([0.600, 0.605, 0.610, 0.604], [0.602, 0.603, 0.608, 0.606])
    assert decide(close, close.p, close.p_equivalent) == "on par"
    noisy = paired([0.5, 0.7, 0.6], [0.55, 0.65, 0.6])
    assert decide(noisy, noisy.p, noisy.p_equivalent) == "too few seeds to tell"
    # the adjusted p-values decide: significant alone, not after a correction
    assert decide(sure, 0.2, 1.0) == "too few seeds to tell"


def _sample(mean: float, sd: float, n: int) -> list[float]:
    """n values with exactly this mean and sample standard deviation."""
    z = np.linspace(-1, 1, n)
    return list(mean + sd * (z - z.mean()) / np.std(z, ddof=1))


@pytest.mark.parametrize("mean, sd, comparisons", [
    (0.10, 0.012, 24), (0.02, 0.017, 24), (0.13, 0.026, 10), (0.004, 0.006, 24),
    (0.0, 0.01, 1)])
def test_seeds_to_decide_is_the_first_n_whose_test_would_decide(mean, sd, comparisons):
    n = seeds_to_decide(paired(_sample(mean, sd, 3), [0.0] * 3), comparisons)
    level = 0.05 / comparisons

    def decided(k: int) -> bool:
        t = paired(_sample(mean, sd, k), [0.0] * k)
        return t.p < level or t.p_equivalent < level
    assert n is not None and decided(n) and not decided(n - 1)


def test_seeds_to_decide_gives_up_where_no_affordable_n_decides():
    # a difference sitting on the equivalence margin is neither shown nor ruled out
    assert seeds_to_decide(paired(_sample(0.02, 0.05, 3), [0.0] * 3), 24) is None
    assert seeds_to_decide(paired([0.6], [0.5]), 24) is None
    assert seeds_to_decide(paired([0.7, 0.8, 0.6], [0.6, 0.7, 0.5]), 24) == 2


def test_an_undecided_claim_says_how_many_seeds_would_decide_it():
    # a steady 3-point gain over 3 noisy seeds: undecided after Holm over the suite
    gains = [0.02, 0.045, 0.025]
    suite = {"period": [m("every 3", s, 0.6 + g) for s, g in enumerate(gains)]
             + [m("never", s, 0.6) for s in range(3)]
             + [m("every 1", s, 0.6 + g / 3) for s, g in enumerate(gains)]}
    findings = assess(suite)
    cells = [line.split(" | ")[-2] for line in report.findings_lines(findings)[2:]]
    assert [f.verdict for f in findings] == ["too few seeds to tell"] * 2
    expected = [seeds_to_decide(f.test, 2) for f in findings]
    assert all(n is not None and n > 3 for n in expected)
    assert cells == [f"about {n}" for n in expected]
    # a table's own section passes the suite's count of comparisons, which needs more seeds
    among_24 = report.findings_lines(findings[:1], comparisons=24)[2].split(" | ")[-2]
    assert among_24 == f"about {seeds_to_decide(findings[0].test, 24)}"
    assert seeds_to_decide(findings[0].test, 24) > seeds_to_decide(findings[0].test, 1)


def test_pairing_by_seed_sees_what_unpaired_errors_hide():
    # a large seed-to-seed spread shared by both settings, and a steady 1.5-point gain
    base = [0.50, 0.60, 0.70, 0.55, 0.65]
    suite = {"period": [m("every 3", s, v + 0.015) for s, v in enumerate(base)]
             + [m("never", s, v) for s, v in enumerate(base)]}
    suite["period"][1].trained["linear"] += 0.001  # not all differences equal
    found = [f for f in assess(suite) if f.claim.b == "never"]
    assert [f.verdict for f in found] == ["better"] and found[0].against_paper == "reproduced"
    unpaired_se = math.sqrt(2 * np.var(base, ddof=1) / len(base))
    assert found[0].test.mean < 2 * unpaired_se  # the old two-standard-error rule: noise


def test_holm_applies_across_the_suite():
    a = [0.70, 0.72, 0.69]
    b = [0.60, 0.66, 0.58]  # raw p about 0.028 on 2 degrees of freedom
    one = {"targets": [m(SPHERE, s, v) for s, v in enumerate(a)]
           + [m(BASIS_32, s, v) for s, v in enumerate(b)]}
    alone = [f for f in assess(one) if f.test is not None]
    assert len(alone) == 1 and alone[0].verdict == "better"
    many = dict(one, period=[m(label, s, v) for label in ("every 1", "every 3", "never")
                             for s, v in enumerate(a)])
    crowded = [f for f in assess(many) if f.table == "targets" and f.claim.b == BASIS_32]
    assert crowded[0].test.p == alone[0].test.p == alone[0].p_holm
    # three comparisons in the suite (the two period claims tie exactly, so they are on par)
    assert crowded[0].p_holm == pytest.approx(3 * alone[0].test.p)
    assert crowded[0].verdict == "too few seeds to tell"
    assert {f.verdict for f in assess(many) if f.table == "period"} == {"on par"}


def test_claims_on_the_own_effect_subtract_each_settings_random_init():
    ms = [m("sobel", s, 0.68 + 0.01 * s, 0.58) for s in range(3)] + \
         [m("clean", s, 0.22, 0.26 - 0.01 * s) for s in range(3)]
    table = TABLES["preprocess_nat"]
    effect = Claim("", "greater", "sobel", "clean", ("linear",), effect=True)
    seeds, a, b = claim_values(table, effect, "linear", ms)
    assert seeds == [0, 1, 2]
    assert a == pytest.approx([0.10, 0.11, 0.12]) and b == pytest.approx([-0.04, -0.03, -0.02])
    against_init = Claim("", "greater", "sobel", RANDOM_INIT, ("linear",))
    _, a, b = claim_values(table, against_init, "linear", ms)
    assert a == pytest.approx([0.68, 0.69, 0.70]) and b == pytest.approx([0.58] * 3)
    # seeds are paired by their number, whatever the order of the measurements
    _, a, b = claim_values(table, effect, "linear", ms[::-1])
    assert a == pytest.approx([0.10, 0.11, 0.12])


# ---------------------------------------------------------------- the report, from CSVs


def _synthetic_csvs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    nat = []
    for seed in range(3):
        nat += [Measurement("clean", seed, {"linear": 0.22 + 0.01 * seed, "knn": 0.16},
                            {"linear": 0.26, "knn": 0.20}, 50.0, ""),
                Measurement("sobel", seed, {"linear": 0.68 + 0.01 * seed, "knn": 0.52,
                                            "mlp": 0.70}, {"linear": 0.58, "knn": 0.57,
                                                           "mlp": 0.60}, 60.0, "")]
    records.write_csv(nat, folder / "preprocess_nat.csv")
    solver = [Measurement(label, seed, {"linear": v, "knn": v - 0.1}, {"linear": 0.58,
                                                                        "knn": 0.57}, 30.0, "")
              for seed in range(3) for label, v in
              (("hungarian", 0.68 + 0.01 * seed), ("emd", 0.68 + 0.01 * seed),
               ("sinkhorn", 0.6 + rng.uniform(0, 0.1)), ("greedy", 0.65))]
    records.write_csv(solver, folder / "solver.csv")
    curve = [Measurement("nat", seed, {}, {}, 100.0, "",
                         {e: {"linear_train": 0.9, "linear_test": 0.55 + 0.01 * e + 0.003 * seed}
                          for e in (0, 1, 2, 4, 8, 12)}) for seed in range(3)]
    records.write_csv(curve, folder / "epochs.csv")
    return nat, solver, curve


def test_csvs_read_back_as_they_were_written(tmp_path):
    nat, _, curve = _synthetic_csvs(tmp_path)
    back = records.read_csv(tmp_path / "preprocess_nat.csv")
    assert [(x.setting, x.seed) for x in back] == [(x.setting, x.seed) for x in nat]
    for x, y in zip(back, nat, strict=True):
        assert x.trained == pytest.approx(y.trained)
        assert x.random_init == pytest.approx(y.random_init)
    again = records.read_csv(tmp_path / "epochs.csv")
    assert [list(x.curve) for x in again] == [[0, 1, 2, 4, 8, 12]] * 3
    assert again[0].curve[12]["linear_test"] == pytest.approx(curve[0].curve[12]["linear_test"])


def test_report_rebuilds_tables_and_results_from_csvs_without_training(tmp_path):
    folder = tmp_path / "results" / "tiny"
    _synthetic_csvs(folder)
    results = tmp_path / "RESULTS.md"
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "results"),
                                 "--results", str(results)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs").exists()
    section = (folder / "preprocess_nat.md").read_text()
    # every probe, trained and at random init, and the paired difference
    assert "| sobel | linear probe | 69.0 ± 1.0 | 58.0 ± 0.0 | +11.0 [+8.5, +13.5] |" in section
    assert "|  | kNN | 52.0 ± 0.0 | 57.0 ± 0.0 | -5.0 [-5.0, -5.0] |" in section
    assert "|  | MLP probe | 70.0 ± 0.0 | 60.0 ± 0.0 | +10.0 [" in section
    assert "each its own effect (trained - random init)" in section  # sobel vs clean
    assert (folder / "preprocess_nat.png").read_bytes()[:4] == b"\x89PNG"
    text = results.read_text()
    assert text.startswith("# natkit benchmark results") and "## Verdicts" in text
    assert "Holm" in text and "TOST" in text and "too few seeds to tell" in text
    assert "| hungarian - emd | +0.0 [+0.0, +0.0] |" in text and "**on par**" in text
    assert "| seeds to decide |" in text and "| **on par** | 3 (decided) |" in text
    assert "![Input preprocessing (NAT)](results/tiny/preprocess_nat.png)" in text
    assert "epoch last - epoch 0" in text
    assert "| 12 | 90.0 ± 0.0 | 67.3 ± 0.3 | +12.0 [+12.0, +12.0] |" in text
    assert "used by the paper" in text  # the paper's column stays


def test_report_keeps_the_header_and_speed_of_an_existing_results_md(tmp_path):
    folder = tmp_path / "results" / "tiny"
    _synthetic_csvs(folder)
    results = tmp_path / "RESULTS.md"
    title = TABLES["solver"].title
    results.write_text("# natkit benchmark results\n\n- machine: the one it ran on\n\n"
                       "## What reproduces at this scale\n\n- old verdicts\n\n## Tables\n\n"
                       f"### {title}\n\nstale\n\n![x](x.png)\n\n"
                       "### Speed: the assignment solvers and the cost of NAT\n\nspeed\n")
    args = ["report", "--out", str(tmp_path / "results"), "--results", str(results)]
    assert runner.invoke(app, args).exit_code == 0
    text = results.read_text()
    assert "- machine: the one it ran on" in text and text.endswith("speed\n")
    assert "old verdicts" not in text and "stale" not in text and "## Verdicts" in text
    assert text.index("## Verdicts") < text.index("## Tables") < text.index(f"### {title}")
    assert text.index("### Input preprocessing (NAT)") < text.index("### Speed")
    assert runner.invoke(app, args).exit_code == 0 and results.read_text() == text  # idempotent


def test_report_needs_csvs_and_runs_alone(tmp_path):
    empty = runner.invoke(app, ["report", "--out", str(tmp_path)])
    assert empty.exit_code == 1 and "no table CSVs" in empty.stderr
    mixed = runner.invoke(app, ["report", "solver", "--out", str(tmp_path)])
    assert mixed.exit_code == 2 and "runs alone" in mixed.stderr


def test_stats_are_mean_and_sample_std():
    s = Stat.of([0.5, 0.7, 0.6])
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n == 3
    assert str(s) == "60.0 ± 10.0"


def test_running_one_table_refreshes_its_section_of_results_md(host, tmp_path):
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
    added = results_page.replace_table_section(text, "New table", "### New table\n\nx\n\n![New](n.png)\n")
    assert added.index("### New table") < added.index("### Speed")


# ---------------------------------------------------------------- choices on validation data


def _one_setting(values):
    table = TABLES["loss"]
    return replace(table, settings=table.settings[:1], choose=Choice("train.lr", values))


def test_a_choice_is_made_on_validation_data_and_the_measured_runs_use_it(host, tmp_path):
    table = _one_setting(("0.001", "0.05"))
    out = io.StringIO()
    console = Console(file=out, width=200)
    chosen = choices.choose(table, table.settings[0], "tiny", tuple(MINIMAL), tmp_path, console)
    assert set(chosen.scores) == {"0.001", "0.05"} and len(chosen.runs) == 2
    best = max(chosen.scores.values())
    assert chosen.scores[chosen.value] == best
    assert chosen.value == next(v for v in ("0.001", "0.05") if chosen.scores[v] == best)
    for m, lr in zip(chosen.runs, ("0.001", "0.05"), strict=True):
        trained = builders.read_run_config(harness.Path(m.run_dir))
        # another draw of the shapes, only the classifier measured, the candidate's step size
        assert trained.data["seed"] == 1 and trained.eval.probes == []
        assert not trained.eval.baseline and trained.train.lr == float(lr)
        assert m.trained["classifier"] == chosen.scores[lr]
    assert out.getvalue().count("validation train.lr=") == 2
    measured = harness.run_table(table, "tiny", 1, tuple(MINIMAL), tmp_path, console,
                                 {"softmax": chosen})
    config = builders.read_run_config(harness.Path(measured[0].run_dir))
    assert config.data["seed"] == 0 and config.train.lr == float(chosen.value)
    assert measured[0].run_dir not in {m.run_dir for m in chosen.runs}
    # made again, the choice reads its runs back
    again = choices.choose(table, table.settings[0], "tiny", tuple(MINIMAL), tmp_path, console)
    assert again.scores == chosen.scores and again.value == chosen.value


def test_a_step_size_that_diverges_scores_zero_and_is_not_chosen(host, tmp_path, monkeypatch):
    table = _one_setting(("1e9", "0.05"))
    console = Console(file=io.StringIO())
    chosen = choices.choose(table, table.settings[0], "tiny", tuple(MINIMAL), tmp_path, console)
    assert chosen.scores["1e9"] == 0.0 and chosen.value == "0.05"
    assert "(1 of 1 seed(s) diverged, scored 0)" in console.file.getvalue()
    diverged = chosen.runs[0]
    assert diverged.trained == {} and diverged.seconds > 0  # its cost is counted
    assert (harness.Path(diverged.run_dir) / records.DIVERGED).is_file()
    # read back on the next invocation, not trained (nor diverged) again
    monkeypatch.setattr(harness, "_train", None)
    again = choices.choose(table, table.settings[0], "tiny", tuple(MINIMAL), tmp_path,
                           Console(file=io.StringIO()))
    assert again.scores == chosen.scores and again.seconds == chosen.seconds


def test_a_choice_refuses_a_value_set_for_every_run(host, tmp_path):
    table = _one_setting(("0.01", "0.05"))
    with pytest.raises(ConfigError, match="--set train.lr: table 'loss' chooses train.lr"):
        choices.choose(table, table.settings[0], "tiny", (*MINIMAL, "train.lr=0.3"), tmp_path,
                       Console(file=io.StringIO()))
    result = runner.invoke(app, ["loss", "--seeds", "1", *sets([*MINIMAL, "train.lr=0.3"]),
                                 "--out", str(tmp_path / "r"), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "leave it unset" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


def test_a_choice_needs_a_table_that_trains_its_candidates():
    with pytest.raises(ValueError, match="table of evaluations"):
        replace(TABLES["layers"], choose=Choice("train.lr", ("0.01",), "linear"))
    with pytest.raises(ValueError, match="only supervised runs have a classifier"):
        replace(TABLES["targets"], choose=Choice("train.lr", ("0.01",)))


def test_a_choice_refuses_validation_data_equal_to_the_measured_data(host, tmp_path):
    table = _one_setting(("0.05",))
    with pytest.raises(ConfigError, match="measured runs' data"):
        choices.choose(table, table.settings[0], "tiny", (*MINIMAL, "data.seed=1"), tmp_path,
                       Console(file=io.StringIO()))
    # a scale without validation data keeps the recipe's own value: nothing is chosen
    assert choices.choose(table, table.settings[0], "paper", (), tmp_path, Console()) is None
    assert "paper" not in VALIDATION


def test_choices_read_back_and_show_in_their_table(tmp_path):
    chosen = [Chosen("softmax", "train.lr", {"0.01": 0.5, "0.1": 0.9, "1": 0.0}, "0.1",
                             "classifier", 1, {"0.01": 40.0, "0.1": 41.0, "1": 3.0}),
              Chosen("square", "train.lr", {"0.01": 0.2, "0.1": 0.3, "1": 0.6}, "1",
                             "classifier", 1, {"0.01": 40.0, "0.1": 41.0, "1": 42.0})]
    path = tmp_path / "loss.choices.csv"
    records.write_choices(chosen, ("data.seed=1",), path)
    back, validation = records.read_choices(path)
    assert validation == "data.seed=1"
    assert [(c.setting, c.value, c.scores, c.seconds) for c in back] == [
        (c.setting, c.value, c.scores, c.seconds) for c in chosen]
    text = report.table_markdown(TABLES["loss"], [], [], choices=(back, validation))
    assert "| setting | train.lr=0.01 | train.lr=0.1 | train.lr=1 |" in text
    assert "| softmax | 50.0 | **90.0** | 0.0 |" in text
    assert "| square (edge) | 20.0 | 30.0 | **60.0** |" in text
    # a best score tied at the end of the grid is at its edge too, whichever of them is chosen
    tied = replace(chosen[0], scores={"0.01": 0.5, "0.1": 0.9, "1": 0.9})
    assert "| softmax (edge) | 50.0 | **90.0** | 90.0 |" in report.table_markdown(
        TABLES["loss"], [], [], choices=([tied], validation))
    assert "`data.seed=1`" in text and "classifier (supervised) accuracy" in text
    assert f"{(84 + 123) / 60:.1f} min of compute" in text  # the choices' runs are counted
    records.write_choices([], (), path)  # a scale that chose nothing leaves no older choice
    assert not path.exists() and records.read_choices(path) == ([], "")


def test_report_shows_the_choices_of_a_table_that_chooses_and_of_no_other(tmp_path):
    folder = tmp_path / "results" / "tiny"
    _synthetic_csvs(folder)
    records.write_csv([Measurement(label, seed, {"classifier": 0.9, "linear": 0.95},
                                  {"linear": 0.58}, 50.0, "")
                      for seed in range(3) for label in ("softmax", "square")],
                     folder / "loss.csv")
    choice = Chosen("softmax", "train.lr", {"0.01": 0.5, "0.1": 0.9}, "0.1",
                            "classifier", 1, {"0.01": 40.0, "0.1": 41.0})
    records.write_choices([choice], ("data.seed=1",), folder / "loss.choices.csv")
    records.write_choices([choice], ("data.seed=1",), folder / "solver.choices.csv")  # stray
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "results"),
                                 "--results", str(tmp_path / "RESULTS.md")])
    assert result.exit_code == 0, result.output
    assert "| softmax | 50.0 | **90.0** |" in (folder / "loss.md").read_text()
    assert "was chosen" not in (folder / "solver.md").read_text()
    assert "| softmax | 50.0 | **90.0** |" in (tmp_path / "RESULTS.md").read_text()


def test_a_rerun_is_recorded_in_the_header_once_per_set_of_tables():
    from benchmarks.results_page import record_rerun

    header = "# r\n\n- machine: a\n- code: c\n- scale `tiny`: s\n\ntext\n"
    once = record_rerun(header, "- re-run of preprocess_nat: today, on b")
    assert once.splitlines()[4:6] == ["- re-run of preprocess_nat: today, on b",
                                      "- scale `tiny`: s"]
    again = record_rerun(once, "- re-run of preprocess_nat: tomorrow, on c")
    assert "today" not in again and again.count("- re-run of preprocess_nat:") == 1
    other = record_rerun(again, "- re-run of dim: tomorrow")
    assert other.count("- re-run of") == 2 and other.endswith("text\n")
