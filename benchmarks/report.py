"""The benchmark tables' markdown sections, figures and verdicts.

Everything here is rebuilt from the tables' CSVs (one row per run, seed and probe,
:mod:`benchmarks.records`), so ``python -m benchmarks report`` can redo the tables,
figures and verdicts without training anything; :mod:`benchmarks.results_page`
places them in RESULTS.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.records import Chosen, Measurement, read_choices, read_suite
from benchmarks.results_page import VERDICTS_HEADING
from benchmarks.stats import (
    ALPHA,
    EQUIVALENCE_MARGIN,
    MOST_SEEDS,
    Finding,
    assess,
    curve_summary,
    curve_verdict,
    paired,
    seeds_to_decide,
    summarise,
)
from benchmarks.tables import RANDOM_INIT, TABLES, Table

METRIC_NAMES = {"classifier": "classifier (supervised)", "linear": "linear probe",
                "knn": "kNN", "mlp": "MLP probe", "linear_test": "linear probe (test split)"}


def verdict_rule(comparisons: int | None = None) -> str:
    """The rule every verdict follows, in words (RESULTS.md and docs/benchmarks.md)."""
    many = f"all {comparisons} comparisons" if comparisons else "all the comparisons"
    return (
        "Verdicts are paired by seed: seed s of every setting shares the initialisation, the "
        "data order and the targets, so two settings are compared on their per-seed "
        "differences a - b, with a 95% t interval on n - 1 degrees of freedom (n seeds). "
        "Where a claim says \"own effect\", each setting enters as its trained accuracy minus "
        "its random init's (what training adds), because its settings change the input and "
        "with it the random-init baseline. A comparison is **better** or **worse** when a "
        "two-sided paired t test rejects \"no difference\"; **on par** only when two "
        "one-sided tests (TOST) show the difference to lie within "
        f"±{100 * EQUIVALENCE_MARGIN:.0f} points (about the binomial standard error of one "
        "accuracy on the 1,000 test images, and below the seed-to-seed spread of a setting); "
        "and **too few seeds to tell** otherwise: failing to find a difference is not "
        f"evidence of none. Each claim is checked on every probe measured, and the p-values "
        f"are adjusted by Holm's method across {many} of the suite (a comparison's difference "
        "and equivalence tests cannot both have a true null hypothesis, so they count once); "
        f"the verdict uses the adjusted p-value at {ALPHA}, the raw one is shown beside it. "
        "The interval shown is unadjusted: one that excludes 0 can still end in \"too few "
        "seeds to tell\" after the adjustment. For an undecided comparison, \"seeds to "
        "decide\" estimates how many seeds would decide it if its mean difference and "
        "spread held: the first n at which either test rejects at 0.05 divided by the "
        f"number of comparisons (Bonferroni, the strictest step of Holm's method), up to "
        f"{MOST_SEEDS}. It plans the next run; it is not a test, and the spread of a few seeds "
        "is itself uncertain.")


# ---------------------------------------------------------------- markdown


def _points(x: float, signed: bool = True) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _interval(values_a: list[float], values_b: list[float]) -> str:
    """a - b paired by position: mean [95% CI] in points, or the mean alone for one seed."""
    if not values_a:
        return "-"
    test = paired(values_a, values_b)
    if test.n < 2:
        return f"{_points(test.mean)} (one seed)"
    return f"{_points(test.mean)} [{_points(test.low)}, {_points(test.high)}]"


def _p(raw: float, adjusted: float) -> str:
    if math.isnan(raw):
        return "-"

    def fmt(p: float) -> str:
        return "<0.001" if p < 0.001 else f"{p:.3f}"
    return f"{fmt(raw)} ({fmt(adjusted)})"


def _sides(f: Finding) -> str:
    """What a finding subtracts, in words."""
    c = f.claim
    if TABLES[f.table].curve_epochs:
        return f"epoch {c.a} - epoch {c.b}"
    if c.b == RANDOM_INIT:
        return f"{c.a} - its random init"
    own = ", each its own effect (trained - random init)" if c.effect else ""
    return f"{c.a} - {c.b}{own}"


def _tested(findings: list[Finding]) -> int:
    return sum(1 for f in findings if f.test is not None and f.test.n > 1)


def _seeds_needed(f: Finding, comparisons: int) -> str:
    """The seeds that decided a finding, or the estimate of how many would."""
    if f.test is None or f.test.n < 2:
        return "-"
    if f.verdict != "too few seeds to tell":
        return f"{f.test.n} (decided)"
    n = seeds_to_decide(f.test, comparisons)
    return f"> {MOST_SEEDS}" if n is None else f"about {n}"


def findings_lines(findings: list[Finding], with_table: bool = False,
                   comparisons: int | None = None) -> list[str]:
    """A markdown table of findings: the difference, its p-values, the verdict and the seeds
    an undecided one would need (among ``comparisons``, by default as many as given)."""
    comparisons = _tested(findings) if comparisons is None else comparisons
    header = ["claim", "probe", "compared", "difference, points [95% CI]",
              "p, difference (Holm)", "p, equivalence (Holm)", "verdict", "seeds to decide",
              "the paper's claim"]
    if with_table:
        header.insert(0, "table")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in findings:
        t = f.test
        diff = "-" if t is None else (
            f"{_points(t.mean)} (one seed)" if t.n < 2 else
            f"{_points(t.mean)} [{_points(t.low)}, {_points(t.high)}]")
        cells = [f.claim.text, METRIC_NAMES.get(f.metric, f.metric), _sides(f), diff,
                 "-" if t is None else _p(t.p, f.p_holm),
                 "-" if t is None else _p(t.p_equivalent, f.p_equivalent_holm),
                 f"**{f.verdict}**", _seeds_needed(f, comparisons), f.against_paper]
        if with_table:
            cells.insert(0, TABLES[f.table].title.split(":")[0])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _seeds(measurements: list[Measurement]) -> int:
    return len({m.seed for m in measurements})


def _seconds(measurements: list[Measurement]) -> float:
    return sum(m.seconds for m in measurements)


def table_markdown(table: Table, measurements: list[Measurement], findings: list[Finding],
                   seconds: float | None = None, seeds: int | None = None,
                   choices: tuple[list[Chosen], str] = ([], "")) -> str:
    """A table section: the choices made on validation data, if any; every probe for the
    trained network and its random init, and the difference, beside the paper; then the
    claims, with their verdicts over the suite."""
    chosen, validation = choices
    if seconds is None:
        seconds = _seconds(measurements) + sum(sum(c.seconds.values()) for c in chosen)
    seeds = _seeds(measurements) if seeds is None else seeds
    lines = [f"### {table.title}", "", table.about, ""]
    if chosen:
        lines += [*_choice_lines(chosen, validation), ""]
    if table.curve_epochs:
        lines += _curve_lines(measurements)
    else:
        lines += _grid_lines(table, measurements)
    own = [f for f in findings if f.table == table.key]
    if own:
        lines += ["", "Claims checked, paired by seed (the rule is at the top of RESULTS.md; "
                      "p-values adjusted across the whole suite):", "",
                  *findings_lines(own, comparisons=_tested(findings))]
    if table.curve_epochs:
        lines += ["", f"The curve's shape: {curve_verdict(curve_summary(measurements))}."]
    lines += ["", f"{seeds} seed(s); accuracies in %, mean ± standard deviation over seeds; "
                  "differences in points, paired by seed, with a 95% t interval; "
                  f"{seconds / 60:.1f} min of compute for this table.", ""]
    return "\n".join(lines)


def _choice_lines(chosen: list[Chosen], validation: str) -> list[str]:
    """Each setting's candidates with their validation scores, the chosen one in bold."""
    first = chosen[0]
    values = list(dict.fromkeys(v for c in chosen for v in c.scores))
    lines = [f"`{first.key}` was chosen for each setting before its measured runs: each "
             f"candidate trained at {first.seeds} seed(s) on validation data (`{validation}`: "
             "images that no measured run trains or tests on), scored by the "
             f"{METRIC_NAMES.get(first.metric, first.metric)} accuracy (%) on that data's test "
             "split; the measured runs use the best, in bold, the first of equal scores (0.0: "
             "the loss diverged). Where a best score lies at either end of the grid (marked "
             "\"edge\"), a wider grid might choose otherwise.", "",
             "| setting | " + " | ".join(f"{first.key}={v}" for v in values) + " |",
             "|" + "---|" * (len(values) + 1)]
    for c in chosen:
        cells = [(f"**{100 * c.scores[v]:.1f}**" if v == c.value else f"{100 * c.scores[v]:.1f}")
                 if v in c.scores else "-" for v in values]
        best = [v for v, score in c.scores.items() if score == c.scores[c.value]]
        edge = " (edge)" if len(c.scores) > 2 and {values[0], values[-1]} & set(best) else ""
        lines.append(f"| {c.setting}{edge} | " + " | ".join(cells) + " |")
    return lines


def _probes(measurements: list[Measurement]) -> list[str]:
    found = {k for m in measurements for k in m.trained}
    return [p for p in METRIC_NAMES if p in found] + sorted(found - set(METRIC_NAMES))


def _grid_lines(table: Table, measurements: list[Measurement]) -> list[str]:
    probes = _probes(measurements)
    header = ["setting", "probe", "trained", "random init", "trained - random init",
              "paper (reported)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in table.settings:
        runs = [m for m in measurements if m.setting == setting.label]
        first = True
        for probe in probes:
            trained = [m.trained[probe] for m in runs if probe in m.trained]
            if not trained:
                continue
            both = [m for m in runs if probe in m.trained and probe in m.random_init]
            base = summarise(runs, probe, "random_init").get(setting.label)
            cells = [setting.label if first else "", METRIC_NAMES.get(probe, probe),
                     str(summarise(runs, probe)[setting.label]), str(base or "-"),
                     _interval([m.trained[probe] for m in both],
                               [m.random_init[probe] for m in both]),
                     (setting.paper or "-") if first else ""]
            lines.append("| " + " | ".join(cells) + " |")
            first = False
        if first:
            lines.append(f"| {setting.label} | - | - | - | - | {setting.paper or '-'} |")
    return lines


def _curve_lines(measurements: list[Measurement]) -> list[str]:
    summary = curve_summary(measurements)
    lines = ["| epochs | linear probe, train split | linear probe, test split | "
             "test split - epoch 0 |", "|---|---|---|---|"]
    first = min(summary) if summary else 0
    for epoch, values in summary.items():
        label = f"{epoch} (random init)" if epoch == 0 else str(epoch)
        both = [m for m in measurements if "linear_test" in m.curve.get(epoch, {})
                and "linear_test" in m.curve.get(first, {})]
        gain = "-" if epoch == first else _interval(
            [m.curve[epoch]["linear_test"] for m in both],
            [m.curve[first]["linear_test"] for m in both])
        lines.append(f"| {label} | {values.get('linear_train', '-')} | "
                     f"{values.get('linear_test', '-')} | {gain} |")
    return lines


def plot_table(table: Table, measurements: list[Measurement], path: Path) -> None:
    """Bars for every probe, trained and at random init, with error bars; or the
    accuracy-vs-epochs curve."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    if table.curve_epochs:
        summary = curve_summary(measurements)
        epochs = list(summary)
        for key, label in (("linear_train", "train split"), ("linear_test", "test split")):
            mean = [100 * summary[e][key].mean for e in epochs]
            std = [100 * summary[e][key].std for e in epochs]
            ax.errorbar(epochs, mean, yerr=std, marker="o", capsize=3, label=label)
        ax.set_xlabel("unsupervised epochs (0 = random init, BatchNorm recalibrated)")
        ax.set_ylabel("linear probe accuracy (%)")
        ax.legend()
    else:
        labels = [s.label for s in table.settings]
        probes = _probes(measurements)
        bars = [(p, w) for p in probes for w in ("trained", "random_init")
                if any(p in (m.trained if w == "trained" else m.random_init)
                       for m in measurements)]
        width = 0.8 / max(len(bars), 1)
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (probe, which) in enumerate(bars):
            stats = summarise(measurements, probe, which)
            xs = [j + i * width for j in range(len(labels))]
            colour = colours[probes.index(probe) % len(colours)]
            ax.bar(xs, [100 * stats[lab].mean if lab in stats else 0 for lab in labels], width,
                   yerr=[100 * stats[lab].std if lab in stats else 0 for lab in labels],
                   capsize=2, color=colour, alpha=1.0 if which == "trained" else 0.35,
                   hatch=None if which == "trained" else "//", edgecolor=colour,
                   label=f"{METRIC_NAMES.get(probe, probe)}"
                         f"{'' if which == 'trained' else ', random init'}")
        ax.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(labels))], labels)
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title(table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdicts_section(findings: list[Finding], curve_lines: list[str] = ()) -> str:
    """RESULTS.md's verdicts: the rule, then every claim on every probe."""
    return "\n".join([
        VERDICTS_HEADING, "", verdict_rule(_tested(findings)), "",
        *findings_lines(findings, with_table=True), "", *curve_lines, ""])


def rebuild(folder: Path, relative_to: Path) -> tuple[list[tuple[str, str]], str]:
    """Rewrite every table's .md and .png in ``folder`` from its CSV (no training).

    Returns each table's (title, section with its figure linked relative to
    ``relative_to``) and the verdicts section, for RESULTS.md.
    """
    suite = read_suite(folder)
    findings = assess(suite)
    sections, curves = [], []
    for key, measurements in suite.items():
        table = TABLES[key]
        # a table that chooses nothing shows no choice, whatever file lies beside its CSV
        choices = (read_choices(folder / f"{key}.choices.csv") if table.choose is not None
                   else ([], ""))
        section = table_markdown(table, measurements, findings, choices=choices)
        (folder / f"{key}.md").write_text(section)
        plot_table(table, measurements, folder / f"{key}.png")
        png = os.path.relpath(folder / f"{key}.png", relative_to)
        sections.append((table.title, f"{section}\n![{table.title}]({png})\n"))
        if table.curve_epochs:
            curves.append(f"- {table.title}, the curve's shape: "
                          f"{curve_verdict(curve_summary(measurements))}")
    return sections, verdicts_section(findings, curves)
