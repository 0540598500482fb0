"""Markdown, CSV and PNG outputs of the benchmark tables, and RESULTS.md."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.harness import (
    Measurement,
    curve_summary,
    curve_verdict,
    summarise,
    verdict,
)
from benchmarks.tables import Table

METRIC_NAMES = {"linear": "linear probe", "knn": "kNN", "mlp": "MLP probe",
                "classifier": "classifier (supervised)"}


def table_markdown(table: Table, measurements: list[Measurement], seconds: float,
                   seeds: int) -> str:
    """A table section: the grid's mean ± std over seeds beside the paper, and the verdicts."""
    lines = [f"### {table.title}", "", table.about, ""]
    if table.curve_epochs:
        lines += _curve_lines(measurements)
    else:
        lines += _grid_lines(table, measurements)
    lines += ["", f"{seeds} seed(s); accuracies in %, mean ± standard deviation over seeds; "
                  f"{seconds / 60:.1f} min of compute for this table.", ""]
    return "\n".join(lines)


def _grid_lines(table: Table, measurements: list[Measurement]) -> list[str]:
    stats = {metric: summarise(measurements, metric) for metric in table.metrics}
    baseline_metric = next((m for m in table.metrics if m != "classifier"), None)
    baseline = summarise(measurements, baseline_metric, "random_init") if baseline_metric else {}
    header = ["setting", *(METRIC_NAMES[m] for m in table.metrics)]
    if baseline:
        header.append(f"random init ({METRIC_NAMES[baseline_metric]})")
    header.append("paper (reported)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for setting in table.settings:
        cells = [setting.label, *(str(stats[m].get(setting.label, "-")) for m in table.metrics)]
        if baseline:
            cells.append(str(baseline.get(setting.label, "-")))
        cells.append(setting.paper or "-")
        lines.append("| " + " | ".join(cells) + " |")
    if table.claims:
        lines += ["", "Findings checked (a difference counts when it exceeds two standard "
                      "errors over seeds; settings are on par when they differ by less, and two "
                      "standard errors are within 3 points):", ""]
        lines += [f"- {claim.text}: **{verdict(claim, measurements)}**" for claim in table.claims]
    return lines


def _curve_lines(measurements: list[Measurement]) -> list[str]:
    summary = curve_summary(measurements)
    lines = ["| epochs | linear probe, train split | linear probe, test split |",
             "|---|---|---|"]
    for epoch, values in summary.items():
        label = f"{epoch} (random init)" if epoch == 0 else str(epoch)
        lines.append(f"| {label} | {values.get('linear_train', '-')} | "
                     f"{values.get('linear_test', '-')} |")
    lines += ["", f"Finding checked: accuracy grows with epochs, then saturates: "
                  f"**{curve_verdict(summary)}**"]
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


def plot_table(table: Table, measurements: list[Measurement], path: Path) -> None:
    """A bar chart with error bars, or the accuracy-vs-epochs curve."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
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
        metrics = table.metrics
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            stats = summarise(measurements, metric)
            xs = [j + i * width for j in range(len(labels))]
            ax.bar(xs, [100 * stats[lab].mean if lab in stats else 0 for lab in labels], width,
                   yerr=[100 * stats[lab].std if lab in stats else 0 for lab in labels],
                   capsize=3, label=METRIC_NAMES[metric])
        ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(labels))], labels)
        # the bar a trained network has to clear: the same network at random init
        baseline = [m.random_init["linear"] for m in measurements if "linear" in m.random_init]
        if baseline:
            ax.axhline(100 * sum(baseline) / len(baseline), color="black", linestyle="--",
                       linewidth=1, label="random init (linear probe)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
    ax.set_title(table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def results_markdown(sections: list[str], header: dict[str, Any]) -> str:
    """RESULTS.md: how it was made, on what, then every section."""
    lines = [
        "# natkit benchmark results",
        "",
        "Generated by the benchmark harness; do not edit by hand. To regenerate:",
        "",
        "```bash",
        header["command"],
        "```",
        "",
        f"- machine: {header['machine']}",
        f"- software: {header['software']}",
        f"- finished: {header['date']}; {header['compute_minutes']:.0f} min of compute in "
        f"all (every run once, as first measured, and the speed suite); this invocation took "
        f"{header['minutes']:.0f} min, finished runs being reused",
        f"- scale `{header['scale']}`: {header['scale_about']}",
        "",
        "Paper values marked (u) are as reported in our design notes and could not be checked "
        "against the paper's text here.",
        "",
        "Each run is the full natkit pipeline (training, then the fair evaluation of "
        "`natkit run`: the random-init network gets its BatchNorm statistics recomputed, "
        "features are standardised with training statistics, probe settings are chosen on a "
        "validation split of the training images, the test split is used once).",
        "",
    ]
    if header.get("summary"):
        lines += ["## What reproduces at this scale", "", *header["summary"], ""]
    lines += ["## Tables", ""]
    return "\n".join(lines) + "\n" + "\n".join(sections)


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
