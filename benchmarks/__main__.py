"""``python -m benchmarks TABLE... | all | speed``: run tables, write their results and RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from benchmarks import report
from benchmarks.harness import curve_summary, curve_verdict, run_table, verdict
from benchmarks.tables import SCALES, TABLES
from natkit import config as cfg
from natkit.errors import NatkitError

DEFAULT_OUT = Path("benchmarks/results")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
console = Console(stderr=True)


def _machine() -> str:
    from benchmarks.speed import machine

    info = machine()
    return ", ".join(f"{k} {v}" for k, v in info.items() if v not in (None, ""))


def _steps_per_run(scale: str, extra: tuple[str, ...]) -> str:
    """How many SGD steps a run of this scale makes, when the dataset's size is known."""
    config = cfg.build(overrides=[*SCALES[scale], *extra])
    n = config.data.get("num_train")
    if not isinstance(n, int):
        return ""
    steps = config.train.epochs * (n // config.train.batch_size)
    return (f" (so a run makes {steps} SGD steps: {config.train.epochs} epochs of "
            f"{n // config.train.batch_size} batches of {config.train.batch_size})")


@app.command()
def main(
    names: Annotated[list[str], typer.Argument(
        help=f"Tables to run ({', '.join(TABLES)}), 'speed', or 'all' (every table and speed).",
        metavar="TABLE...")],
    scale: Annotated[str, typer.Option(help="tiny (2 CPU cores, no download) or paper "
                                            "(the authors' recipe; needs --set data.root=...).")]
    = "tiny",
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per setting "
                                                          "[default: 3 tiny, 1 paper].")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", help="Extra config override for every run, e.g. train.epochs=1.")] = None,
    out: Annotated[Path, typer.Option(help="Where tables (md, csv, png) are written.")]
    = DEFAULT_OUT,
    runs: Annotated[Path, typer.Option(help="Where the runs are kept (finished runs are reused).")]
    = Path("benchmarks/runs"),
    results: Annotated[Path | None, typer.Option(
        help="RESULTS.md to write after 'all' [default: benchmarks/RESULTS.md at tiny scale].")]
    = None,
    quick_speed: Annotated[bool, typer.Option(help="Small sizes for the speed suite (smoke).")]
    = False,
) -> None:
    """Reproduce the paper's ablation tables at small scale, and time the code."""
    valid = [*TABLES, "speed", "all"]
    unknown = [n for n in names if n not in valid]
    if unknown:
        typer.echo(f"error: unknown table '{unknown[0]}'; valid: {', '.join(valid)}", err=True)
        raise typer.Exit(2)
    if scale not in SCALES:
        typer.echo(f"error: --scale: unknown scale '{scale}'; valid: {', '.join(SCALES)}",
                   err=True)
        raise typer.Exit(2)
    keys = list(TABLES) if "all" in names else [n for n in names if n in TABLES]
    with_speed = "all" in names or "speed" in names
    seeds = seeds or (3 if scale == "tiny" else 1)
    extra = tuple(overrides or ())
    target = out / scale
    target.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections, findings = [], []
    refresh: list[tuple[str, str, Path]] = []  # tables to update in RESULTS.md outside 'all'
    run_seconds: dict[str, float] = {}  # a run shared by several tables is counted once
    try:
        for key in keys:
            table = TABLES[key]
            missing = table.missing()
            if missing:
                typer.echo(f"[{key}] skipped: needs {', '.join(missing)}", err=True)
                continue
            t0 = time.perf_counter()
            measured = run_table(table, scale, seeds, extra, runs / scale, console)
            seconds = sum(m.seconds for m in measured)
            run_seconds.update((m.run_dir, m.seconds) for m in measured)
            section = report.table_markdown(table, measured, seconds, seeds)
            (target / f"{key}.md").write_text(section)
            report.write_csv(measured, target / f"{key}.csv")
            report.plot_table(table, measured, target / f"{key}.png")
            sections.append((section, table.title, target / f"{key}.png"))
            refresh.append((table.title, section, target / f"{key}.png"))
            findings += [f"- {claim.text}: {verdict(claim, measured)}" for claim in table.claims]
            if table.curve_epochs:
                findings.append(f"- accuracy grows with epochs, then saturates: "
                                f"{curve_verdict(curve_summary(measured))}")
            console.print(f"[{key}] done in {(time.perf_counter() - t0) / 60:.1f} min "
                          f"-> {target / (key + '.md')}", highlight=False)
    except NatkitError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(exc.exit_code) from None
    if with_speed:
        from benchmarks.speed import plot_solver_speed, run_speed, speed_markdown

        t0 = time.perf_counter()
        speed = run_speed(quick=quick_speed)
        run_seconds["speed"] = time.perf_counter() - t0
        (target / "speed.json").write_text(json.dumps(speed, indent=1, default=str))
        plot_solver_speed(speed, target / "speed.png")
        section = speed_markdown(speed)
        (target / "speed.md").write_text(section)
        results_path = results or (Path("benchmarks/RESULTS.md") if scale == "tiny"
                                   else target / "RESULTS.md")
        section += "\n" + report.gpu_links(out, results_path.parent)
        sections.append((section, "solver speed", target / "speed.png"))
        console.print(f"[speed] done in {(time.perf_counter() - t0) / 60:.1f} min", highlight=False)
        if ("all" not in names and results_path.is_file()
                and (results is not None or out == DEFAULT_OUT)):  # the other sections stay as measured
            png = os.path.relpath(target / "speed.png", results_path.parent)
            figure = f"{section}\n![solver speed]({png})\n"
            results_path.write_text(report.replace_speed_section(results_path.read_text(), figure))
            console.print(f"updated the speed section of {results_path}", highlight=False)
    # the committed RESULTS.md shows the committed results: refreshed only by runs that write
    # there (or into the file --results names)
    results_file = results or (Path("benchmarks/RESULTS.md") if out == DEFAULT_OUT
                               and scale == "tiny" else None)
    if ("all" not in names and refresh and results_file is not None
            and results_file.is_file()):  # the other sections stay as measured
        text = results_file.read_text()
        for title, section, png in refresh:
            figure = f"{section}\n![{title}]({os.path.relpath(png, results_file.parent)})\n"
            text = report.replace_table_section(text, title, figure)
        results_file.write_text(text)
        console.print(f"updated {len(refresh)} table(s) in {results_file}", highlight=False)
    if "all" in names:
        path = results or (Path("benchmarks/RESULTS.md") if scale == "tiny"
                           else target / "RESULTS.md")
        command = " ".join(["python -m benchmarks", *names, "--scale", scale, "--seeds",
                            str(seeds), *(f"--set {shlex.quote(o)}" for o in extra)])
        header = {
            "command": command, "machine": _machine(),
            "software": f"natkit, torch {torch.__version__}, python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "minutes": (time.perf_counter() - started) / 60, "scale": scale,
            "compute_minutes": sum(run_seconds.values()) / 60,
            "scale_about": "; ".join(SCALES[scale]) + _steps_per_run(scale, extra),
            "summary": findings,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        figures = [f"{text}\n![{title}]({os.path.relpath(png, path.parent)})\n"
                   for text, title, png in sections]
        path.write_text(report.results_markdown(figures, header))
        console.print(f"wrote {path}", highlight=False)


if __name__ == "__main__":
    app()
