"""The tables an evaluation prints: test accuracies of one checkpoint, or against epochs."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def results_table(results: dict[str, dict[str, float]], details: dict[str, Any]) -> Table:
    """A rich table of test accuracies: trained, random init and the difference."""
    title = f"test accuracy, frozen '{details['layer']}' features ({details['feature_dim']} dims)"
    table = Table(title=title, min_width=len(title))  # rich wraps a title wider than its table
    table.add_column("probe")
    table.add_column("trained", justify="right")
    table.add_column("random init", justify="right")
    table.add_column("difference", justify="right")
    for probe, accs in results.items():
        trained, random = accs.get("trained"), accs.get("random_init")
        diff = f"{100 * (trained - random):+.1f}" if random is not None else "-"
        table.add_row(probe, f"{100 * trained:.1f}%",
                      f"{100 * random:.1f}%" if random is not None else "-", diff)
    return table


def curve_table(curve: dict[int, dict[str, float]]) -> Table:
    """A rich table of test accuracy per probe against epochs."""
    probes = sorted({p for accs in curve.values() for p in accs})
    title = "test accuracy against epochs (0: random init)"
    table = Table(title=title, min_width=len(title))
    table.add_column("epoch", justify="right")
    for probe in probes:
        table.add_column(probe, justify="right")
    for epoch, accs in curve.items():
        table.add_row(str(epoch), *(f"{100 * accs[p]:.1f}%" if p in accs else "-" for p in probes))
    return table
