"""``python -m benchmarks TABLE... | all | speed | report``: run tables, write their results and
RESULTS.md; ``report`` rebuilds the tables, figures, verdicts and RESULTS.md from the CSVs."""

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
from benchmarks.harness import choose, run_table
from benchmarks.tables import SCALES, SUPERVISED, TABLES, VALIDATION
from natkit import config as cfg
from natkit.errors import NatkitError

DEFAULT_OUT = Path("benchmarks/results")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
console = Console(stderr=True)


def _machine() -> str:
    from benchmarks.speed import machine

    info = machine()
    return ", ".join(f"{k} {v}" for k, v in info.items() if v not in (None, ""))


def _steps_per_run(recipe: tuple[str, ...], extra: tuple[str, ...]) -> str:
    """How many SGD steps a run of this recipe makes, when the dataset's size is known."""
    config = cfg.build(overrides=[*recipe, *extra])
    n = config.data.get("num_train")
    if not isinstance(n, int):
        return ""
    steps = config.train.epochs * (n // config.train.batch_size)
    return (f" (so a run makes {steps} SGD steps: {config.train.epochs} epochs of "
            f"{n // config.train.batch_size} batches of {config.train.batch_size})")


def _scale_about(scale: str, extra: tuple[str, ...]) -> str:
    """The scale's recipes in words: the NAT runs', the supervised rows', the validation data."""
    nat, supervised = SCALES[scale], SUPERVISED[scale]
    own = [o for o in supervised if o not in nat]
    text = "; ".join(nat) + _steps_per_run(nat, extra)
    text += (f". Supervised rows change it to {'; '.join(own)}"
             f"{_steps_per_run(supervised, extra)}")
    if scale in VALIDATION:
        text += (f", and a step size chosen per setting on validation data "
                 f"({'; '.join(VALIDATION[scale])})")
    return text


@app.command()
def main(
    names: Annotated[list[str], typer.Argument(
        help=f"Tables to run ({', '.join(TABLES)}), 'speed', 'all' (every table and speed), "
             "or 'report' (rebuild every table's .md and .png and RESULTS.md from the CSVs, "
             "training nothing).",
        metavar="TABLE...")],
    scale: Annotated[str, typer.Option(help="tiny (2 CPU cores, no download) or paper "
                                            "(the authors' recipe; needs --set data.root=...).")]
    = "tiny",
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per setting, up to a table's "
                                                          "max_seeds [default: 4 tiny, 1 paper].")]
    = None,
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
    valid = [*TABLES, "speed", "all", "report"]
    unknown = [n for n in names if n not in valid]
    if unknown:
        typer.echo(f"error: unknown table '{unknown[0]}'; valid: {', '.join(valid)}", err=True)
        raise typer.Exit(2)
    if scale not in SCALES:
        typer.echo(f"error: --scale: unknown scale '{scale}'; valid: {', '.join(SCALES)}",
                   err=True)
        raise typer.Exit(2)
    if "report" in names:
        if len(names) > 1:
            typer.echo("error: 'report' runs alone (it trains nothing)", err=True)
            raise typer.Exit(2)
        _report(out / scale, results or (Path("benchmarks/RESULTS.md") if out == DEFAULT_OUT
                                         and scale == "tiny" else out / scale / "RESULTS.md"))
        return
    keys = list(TABLES) if "all" in names else [n for n in names if n in TABLES]
    with_speed = "all" in names or "speed" in names
    seeds = seeds or (4 if scale == "tiny" else 1)
    extra = tuple(overrides or ())
    target = out / scale
    target.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sections: list[tuple[str, str, Path]] = []  # the speed section, for 'all'
    measured_any = False
    run_seconds: dict[str, float] = {}  # a run shared by several tables is counted once
    run_code: dict[str, str] = {}  # the fingerprint of the code that trained each run
    try:
        for key in keys:
            table = TABLES[key]
            missing = table.missing()
            if missing:
                typer.echo(f"[{key}] skipped: needs {', '.join(missing)}", err=True)
                continue
            t0 = time.perf_counter()
            n = seeds if table.max_seeds is None else min(seeds, table.max_seeds)
            chosen = {s.label: c for s in table.settings
                      if (c := choose(table, s, scale, extra, runs / scale, console)) is not None}
            measured = run_table(table, scale, n, extra, runs / scale, console, chosen)
            validation = [m for c in chosen.values() for m in c.runs]
            run_seconds.update((m.run_dir, m.seconds) for m in [*measured, *validation])
            run_code.update((m.run_dir, m.code) for m in [*measured, *validation])
            report.write_csv(measured, target / f"{key}.csv")
            report.write_choices(list(chosen.values()), VALIDATION.get(scale, ()),
                                 target / f"{key}.choices.csv")
            measured_any = True
            console.print(f"[{key}] done in {(time.perf_counter() - t0) / 60:.1f} min "
                          f"-> {target / (key + '.md')}", highlight=False, markup=False)
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
        console.print(f"[speed] done in {(time.perf_counter() - t0) / 60:.1f} min", highlight=False,
                      markup=False)
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
    if "all" in names:
        results_file = results or (Path("benchmarks/RESULTS.md") if scale == "tiny"
                                   else target / "RESULTS.md")
    if measured_any or "all" in names:
        # verdicts are adjusted across the whole suite, so every table in the folder is redone
        anchor = results_file.parent if results_file is not None else target
        tables, verdicts = report.rebuild(target, anchor)
    if ("all" not in names and measured_any and results_file is not None
            and results_file.is_file()):  # the header and speed stay as measured
        results_file.write_text(report.refresh_results(results_file.read_text(), tables,
                                                       verdicts))
        console.print(f"updated {len(tables)} table(s) and the verdicts in {results_file}",
                      highlight=False)
    if "all" in names:
        path = results_file
        command = " ".join(["python -m benchmarks", *names, "--scale", scale, "--seeds",
                            str(seeds), *(f"--set {shlex.quote(o)}" for o in extra)])
        header = {
            "command": command, "machine": _machine(),
            "software": f"natkit, torch {torch.__version__}, python {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "minutes": (time.perf_counter() - started) / 60, "scale": scale,
            "compute_minutes": sum(run_seconds.values()) / 60,
            "code": _code_summary(run_code),
            "scale_about": _scale_about(scale, extra),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        figures = [section for _, section in tables]
        figures += [f"{text}\n![{title}]({os.path.relpath(png, path.parent)})\n"
                    for text, title, png in sections]
        path.write_text(report.results_markdown(figures, header, verdicts))
        console.print(f"wrote {path}", highlight=False)


def _code_summary(run_code: dict[str, str]) -> str:
    """Which code trained the runs, by fingerprint (benchmarks.harness.code_fingerprint)."""
    from collections import Counter

    from benchmarks.harness import code_fingerprint

    counts = Counter(code or "not recorded" for code in run_code.values())
    current = code_fingerprint()
    if set(counts) <= {current}:
        return f"every run trained by the current code (fingerprint {current})"
    parts = ", ".join(f"{code} ({n} runs)" for code, n in counts.most_common())
    return (f"runs trained by {len(counts)} versions of the code: {parts}; the current code is "
            f"{current}. Delete benchmarks/runs/ to retrain them all with it")


def _report(folder: Path, results_file: Path) -> None:
    """Rebuild every table's .md and .png, the verdicts and RESULTS.md from the CSVs."""
    if not any(folder.glob("*.csv")):
        typer.echo(f"error: no table CSVs in {folder}", err=True)
        raise typer.Exit(1)
    tables, verdicts = report.rebuild(folder, results_file.parent)
    if results_file.is_file():
        text = report.refresh_results(results_file.read_text(), tables, verdicts)
    else:
        text = report.fresh_results(folder, results_file.parent, tables, verdicts)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(text)
    console.print(f"rebuilt {len(tables)} table(s) in {folder} and {results_file} from the CSVs",
                  highlight=False)


if __name__ == "__main__":
    app()
