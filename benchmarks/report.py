"""Markdown, CSV and PNG outputs of the benchmark tables, and RESULTS.md.

Everything here is rebuilt from the tables' CSVs (one row per run, seed and probe), so
``python -m benchmarks report`` can redo the tables, figures and verdicts without
training anything.
"""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.harness import (
    Chosen,
    Finding,
    Measurement,
    assess,
    curve_summary,
    curve_verdict,
    summarise,
)
from benchmarks.stats import ALPHA, EQUIVALENCE_MARGIN, MOST_SEEDS, paired, seeds_to_decide
from benchmarks.tables import RANDOM_INIT, TABLES, Table

METRIC_NAMES = {"classifier": "classifier (supervised)", "linear": "linear probe",
                "knn": "kNN", "mlp": "MLP probe", "linear_test": "linear probe (test split)"}
VERDICTS_HEADING = "## Verdicts"


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


# ---------------------------------------------------------------- reading back


def read_csv(path: Path) -> list[Measurement]:
    """The measurements of a table's CSV (as :func:`write_csv` wrote them), one per run."""
    runs: dict[tuple[str, int], Measurement] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["setting"], int(row["seed"]))
            m = runs.setdefault(key, Measurement(key[0], key[1], {}, {},
                                                 float(row["seconds"] or 0), ""))
            if row["epoch"]:
                m.curve.setdefault(int(row["epoch"]), {})[row["metric"]] = float(row["trained"])
                continue
            m.trained[row["metric"]] = float(row["trained"])
            if row["random_init"]:
                m.random_init[row["metric"]] = float(row["random_init"])
    for m in runs.values():
        m.curve = dict(sorted(m.curve.items()))
    return list(runs.values())


def read_suite(folder: Path) -> dict[str, list[Measurement]]:
    """Every table with a CSV in ``folder``, in the order of TABLES."""
    return {key: read_csv(folder / f"{key}.csv") for key in TABLES
            if (folder / f"{key}.csv").is_file()}


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


def write_csv(measurements: list[Measurement], path: Path) -> None:
    """One row per (setting, seed, metric) with the trained and random-init accuracy."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "seed", "metric", "trained", "random_init", "epoch",
                         "seconds"])
        for m in measurements:
            if m.curve:
                for epoch, values in m.curve.items():
                    for key, value in values.items():
                        writer.writerow([m.setting, m.seed, key, f"{value:.4f}", "", epoch,
                                         f"{m.seconds:.1f}"])
                continue
            for metric, value in m.trained.items():
                base = m.random_init.get(metric)
                writer.writerow([m.setting, m.seed, metric, f"{value:.4f}",
                                 "" if base is None else f"{base:.4f}", "", f"{m.seconds:.1f}"])


def write_choices(chosen: list[Chosen], validation: tuple[str, ...], path: Path) -> None:
    """One row per (setting, candidate) of a table's choice; no file when it chose nothing."""
    if not chosen:
        path.unlink(missing_ok=True)  # a scale without validation data keeps no older choice
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["setting", "key", "value", "metric", "score", "chosen", "seeds",
                         "seconds", "validation"])
        for c in chosen:
            for value, score in c.scores.items():
                writer.writerow([c.setting, c.key, value, c.metric, f"{score:.4f}",
                                 int(value == c.value), c.seeds, f"{c.seconds[value]:.1f}",
                                 " ".join(validation)])


def read_choices(path: Path) -> tuple[list[Chosen], str]:
    """The choices :func:`write_choices` wrote, and the validation data they were made on."""
    if not path.is_file():
        return [], ""
    chosen: dict[str, Chosen] = {}
    validation = ""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            c = chosen.setdefault(row["setting"], Chosen(row["setting"], row["key"], {}, "",
                                                         row["metric"], int(row["seeds"]), {}))
            c.scores[row["value"]] = float(row["score"])
            c.seconds[row["value"]] = float(row["seconds"])
            if row["chosen"] == "1":
                c.value = row["value"]
            validation = row["validation"]
    return list(chosen.values()), validation


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


def results_markdown(sections: list[str], header: dict[str, Any], verdicts: str = "") -> str:
    """RESULTS.md: how it was made, on what, the verdicts, then every section."""
    lines = [
        "# natkit benchmark results",
        "",
        "Generated by the benchmark harness; do not edit by hand. To regenerate:",
        "",
        "```bash",
        header["command"],
        "```",
        "",
        "(`python -m benchmarks report` rebuilds the tables, figures and verdicts from the "
        "CSVs without training.)",
        "",
        f"- machine: {header['machine']}",
        f"- software: {header['software']}",
        f"- finished: {header['date']}; {header['compute_minutes']:.0f} min of compute in "
        f"all (every run once, as first measured, and the speed suite); this invocation took "
        f"{header['minutes']:.0f} min, finished runs being reused",
        f"- code: {header['code']}",
        f"- scale `{header['scale']}`: {header['scale_about']}",
        "",
        "Paper values marked (u) are as reported in our design notes and could not be checked "
        "against the paper's text here.",
        "",
        "Each run is the full natkit pipeline (training, then the fair evaluation of "
        "`natkit run`: both the trained network and its random init get their BatchNorm "
        "statistics recomputed on the unaugmented training images, features are standardised "
        "with training statistics, probe settings are chosen on a "
        "validation split of the training images, the test split is used once).",
        "",
    ]
    if verdicts:
        lines += [verdicts]
    lines += ["## Tables", ""]
    return "\n".join(lines) + "\n" + "\n".join(sections)


def fresh_results(folder: Path, relative_to: Path, sections: list[tuple[str, str]],
                  verdicts: str) -> str:
    """A RESULTS.md for a folder of CSVs that has none: the verdicts, the tables, and the
    speed section if the folder holds one."""
    lines = ["# natkit benchmark results", "",
             f"Rebuilt from the CSVs in `{folder}` by `python -m benchmarks report`; how and "
             "where they were measured is not recorded here.", "", verdicts, "## Tables", "",
             *(section for _, section in sections)]
    speed = folder / "speed.md"
    if speed.is_file():
        png = os.path.relpath(folder / "speed.png", relative_to)
        lines.append(f"{speed.read_text()}\n![solver speed]({png})\n")
    return "\n".join(lines)


def refresh_results(results: str, sections: list[tuple[str, str]], verdicts: str) -> str:
    """RESULTS.md text with its verdicts and the given tables' sections replaced; the rest
    (header, other tables, speed) stays as it was."""
    for title, section in sections:
        results = replace_table_section(results, title, section)
    old = re.search(r"^## (Verdicts|What reproduces at this scale)\n.*?(?=^## )", results,
                    flags=re.M | re.S)
    if old:
        return results[:old.start()] + verdicts + "\n" + results[old.end():]
    tables = results.find("\n## Tables\n")
    if tables >= 0:
        return results[:tables + 1] + verdicts + "\n" + results[tables + 1:]
    return results


SPEED_HEADING = "### Speed: the assignment solvers and the cost of NAT"


def replace_speed_section(results: str, section: str) -> str:
    """RESULTS.md text with its speed section (heading to figure) replaced by ``section``."""
    return replace_table_section(results, SPEED_HEADING.removeprefix("### "), section)


def replace_table_section(results: str, title: str, section: str) -> str:
    """RESULTS.md text with one table's section (heading to figure) replaced by ``section``.

    A table not there yet goes before the speed section (or at the end).
    """
    start = results.find(f"### {title}\n")
    if start < 0:
        before = results.find(SPEED_HEADING)
        if before < 0:
            return results.rstrip("\n") + "\n\n" + section
        return results[:before] + section + "\n" + results[before:]
    end = results.find("\n![", start)
    end = results.find("\n", end + 1) + 1 if end >= 0 else len(results)
    return results[:start] + section + results[end:]


def gpu_links(results_dir: Path, relative_to: Path) -> str:
    """A paragraph pointing at the GPU speed tables measured on lent machines, if any."""
    found = sorted(results_dir.glob("gpu-*/speed.md"))
    if not found:
        return ""
    links = ", ".join(f"[{md.parent.name}]({os.path.relpath(md, relative_to)})" for md in found)
    return (f"The same suite on a GPU (the solvers on the device, the paper configuration's step, "
            f"the speed switches): {links}.\n")
