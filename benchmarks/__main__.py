"""``python -m benchmarks TABLE... | all | speed | report``: run tables, write their results and
RESULTS.md; ``report`` rebuilds the tables, figures, verdicts and RESULTS.md from the CSVs."""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from benchmarks import records, report, results_page
from benchmarks.choices import choose
from benchmarks.harness import run_table
from benchmarks.records import Measurement, code_fingerprint
from benchmarks.speed.report import plot_solver_speed, speed_markdown
from benchmarks.speed.suite import run_speed
from benchmarks.tables import SCALES, SUPERVISED, TABLES, VALIDATION, Table
from benchmarks.timing import machine, stopwatch, timed
from natkit import config as cfg
from natkit.errors import NatkitError

DEFAULT_OUT = Path("benchmarks/results")
COMMITTED = Path("benchmarks/RESULTS.md")  # the tiny scale's results, as committed
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
console = Console(stderr=True)


@dataclass(frozen=True)
class Invocation:
    """What one command line asks for, its defaults filled in."""

    names: tuple[str, ...]
    scale: str
    seeds: int
    seeds_given: bool  # --seeds was given: every table runs that many (up to its max_seeds)
    extra: tuple[str, ...]  # --set overrides for every run
    out: Path
    runs: Path
    results: Path | None  # --results, as given
    quick_speed: bool

    @property
    def everything(self) -> bool:
        """Whether 'all' was asked for: every table, the speed suite, a fresh RESULTS.md."""
        return "all" in self.names

    @property
    def tables(self) -> list[str]:
        """The tables to run, in the order of TABLES for 'all', else as named."""
        return list(TABLES) if self.everything else [n for n in self.names if n in TABLES]

    @property
    def target(self) -> Path:
        """Where this scale's tables, CSVs and speed files go."""
        return self.out / self.scale

    @property
    def suite_results(self) -> Path:
        """The RESULTS.md that 'all' writes and the speed suite's section belongs to."""
        return self.results or (COMMITTED if self.scale == "tiny" else self.target / "RESULTS.md")

    @property
    def refreshed_results(self) -> Path | None:
        """The RESULTS.md that running some tables refreshes: only one that shows these results
        (the committed one for the committed folder, or the file --results names)."""
        committed = self.out == DEFAULT_OUT and self.scale == "tiny"
        return self.results or (COMMITTED if committed else None)


@dataclass
class Ledger:
    """What the invocation's runs cost and which code trained them (a run shared by several
    tables counted once)."""

    seconds: dict[str, float] = field(default_factory=dict)  # run folder (or "speed") -> seconds
    code: dict[str, str] = field(default_factory=dict)  # run folder -> code fingerprint
    measured_any: bool = False

    def add(self, runs: list[Measurement]) -> None:
        """Count ``runs`` (read back or trained now) once each."""
        self.seconds.update((m.run_dir, m.seconds) for m in runs)
        self.code.update((m.run_dir, m.code) for m in runs)


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
                                                          "max_seeds [default: 4 tiny (a table's "
                                                          "tiny_seeds where it sets more), 1 "
                                                          "paper].")]
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
    _check(names, scale)
    run = Invocation(tuple(names), scale, seeds or (4 if scale == "tiny" else 1),
                     seeds is not None, tuple(overrides or ()), out, runs, results, quick_speed)
    if "report" in names:
        _report(run.target, run.refreshed_results or run.target / "RESULTS.md")
        return
    elapsed = stopwatch()
    run.target.mkdir(parents=True, exist_ok=True)
    ledger = _run_tables(run)
    figures = []  # (section, title, figure) of the speed suite, for 'all'
    if run.everything or "speed" in names:
        figures.append(_run_speed(run, ledger))
    _write_results(run, ledger, figures, elapsed)


def _check(names: list[str], scale: str) -> None:
    """Exit 2 on an unknown table or scale, or 'report' with anything else."""
    valid = [*TABLES, "speed", "all", "report"]
    unknown = [n for n in names if n not in valid]
    if unknown:
        typer.echo(f"error: unknown table '{unknown[0]}'; valid: {', '.join(valid)}", err=True)
        raise typer.Exit(2)
    if scale not in SCALES:
        typer.echo(f"error: --scale: unknown scale '{scale}'; valid: {', '.join(SCALES)}",
                   err=True)
        raise typer.Exit(2)
    if "report" in names and len(names) > 1:
        typer.echo("error: 'report' runs alone (it trains nothing)", err=True)
        raise typer.Exit(2)


def _run_tables(run: Invocation) -> Ledger:
    """Every table asked for, skipping those whose components are not installed."""
    ledger = Ledger()
    try:
        for key in run.tables:
            _run_table(key, run, ledger)
    except NatkitError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(exc.exit_code) from None
    return ledger


def table_seeds(table: Table, run: Invocation) -> int:
    """The seeds a table runs: --seeds, or at the tiny scale its own default, up to its cap."""
    seeds = run.seeds
    if not run.seeds_given and run.scale == "tiny" and table.tiny_seeds is not None:
        seeds = table.tiny_seeds
    return seeds if table.max_seeds is None else min(seeds, table.max_seeds)


def _run_table(key: str, run: Invocation, ledger: Ledger) -> None:
    """One table: its choices on validation data, its runs, and its CSVs."""
    table = TABLES[key]
    missing = table.missing()
    if missing:
        typer.echo(f"[{key}] skipped: needs {', '.join(missing)}", err=True)
        return
    elapsed = stopwatch()
    seeds = table_seeds(table, run)
    folder = run.runs / run.scale
    chosen = {s.label: c for s in table.settings
              if (c := choose(table, s, run.scale, run.extra, folder, console)) is not None}
    measured = run_table(table, run.scale, seeds, run.extra, folder, console, chosen)
    ledger.add([*measured, *(m for c in chosen.values() for m in c.runs)])
    records.write_csv(measured, run.target / f"{key}.csv")
    records.write_choices(list(chosen.values()), VALIDATION.get(run.scale, ()),
                          run.target / f"{key}.choices.csv")
    ledger.measured_any = True
    console.print(f"[{key}] done in {elapsed() / 60:.1f} min -> {run.target / (key + '.md')}",
                  highlight=False, markup=False)


def _run_speed(run: Invocation, ledger: Ledger) -> tuple[str, str, Path]:
    """The speed suite and its files; a run of it alone updates the speed section of a
    RESULTS.md that shows these results. Returns the section, its title and its figure."""
    ledger.seconds["speed"], speed = timed(lambda: run_speed(quick=run.quick_speed))
    (run.target / "speed.json").write_text(json.dumps(speed.to_dict(), indent=1, default=str))
    png = run.target / "speed.png"
    plot_solver_speed(speed, png)
    section = speed_markdown(speed)
    (run.target / "speed.md").write_text(section)
    path = run.suite_results
    section += "\n" + results_page.gpu_links(run.out, path.parent)
    console.print(f"[speed] done in {ledger.seconds['speed'] / 60:.1f} min", highlight=False,
                  markup=False)
    # the other sections stay as measured
    if (not run.everything and path.is_file()
            and (run.results is not None or run.out == DEFAULT_OUT)):
        figure = f"{section}\n![solver speed]({os.path.relpath(png, path.parent)})\n"
        path.write_text(results_page.replace_speed_section(path.read_text(), figure))
        console.print(f"updated the speed section of {path}", highlight=False)
    return section, "solver speed", png


def _write_results(run: Invocation, ledger: Ledger, figures: list[tuple[str, str, Path]],
                   elapsed: Callable[[], float]) -> None:
    """Rebuild every table of the folder, then write RESULTS.md ('all') or refresh its tables
    and verdicts (the header and speed stay as measured)."""
    path = run.suite_results if run.everything else run.refreshed_results
    if not (ledger.measured_any or run.everything):
        return
    # verdicts are adjusted across the whole suite, so every table in the folder is redone
    tables, verdicts = report.rebuild(run.target, path.parent if path is not None else run.target)
    if not run.everything:
        if path is not None and path.is_file():
            text = results_page.refresh_results(path.read_text(), tables, verdicts)
            if ledger.measured_any:  # the header says which tables were measured again
                text = results_page.record_rerun(text, _rerun_line(run, ledger))
            path.write_text(text)
            console.print(f"updated {len(tables)} table(s) and the verdicts in {path}",
                          highlight=False)
        return
    sections = [section for _, section in tables]
    sections += [f"{text}\n![{title}]({os.path.relpath(png, path.parent)})\n"
                 for text, title, png in figures]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(results_page.results_markdown(sections, _header(run, ledger, elapsed()),
                                                  verdicts))
    console.print(f"wrote {path}", highlight=False)


def _header(run: Invocation, ledger: Ledger, seconds: float) -> dict[str, str | float]:
    """RESULTS.md's header: the command, the machine and software, what it cost, which code."""
    seeds = ["--seeds", str(run.seeds)] if run.seeds_given else []
    command = " ".join(["python -m benchmarks", *run.names, "--scale", run.scale, *seeds,
                        *(f"--set {shlex.quote(o)}" for o in run.extra)])
    return {
        "command": command,
        "machine": ", ".join(f"{k} {v}" for k, v in asdict(machine()).items()
                             if v not in (None, "")),
        "software": f"natkit, torch {torch.__version__}, python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "minutes": seconds / 60, "scale": run.scale,
        "compute_minutes": sum(ledger.seconds.values()) / 60,
        "code": _code_summary(ledger.code),
        "scale_about": _scale_about(run.scale, run.extra),
    }


def _rerun_line(run: Invocation, ledger: Ledger) -> str:
    """The header line of a partial invocation: its tables, when, where, by which code."""
    header = _header(run, ledger, 0.0)
    return (f"- re-run of {', '.join(run.tables)}: {header['date']}, "
            f"{header['compute_minutes']:.1f} min of compute, `{header['command']}`, on "
            f"{header['machine']}; {header['code']}")


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


def _code_summary(run_code: dict[str, str]) -> str:
    """Which code trained the runs, by fingerprint (benchmarks.records.code_fingerprint)."""
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
        text = results_page.refresh_results(results_file.read_text(), tables, verdicts)
    else:
        text = results_page.fresh_results(folder, results_file.parent, tables, verdicts)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(text)
    console.print(f"rebuilt {len(tables)} table(s) in {folder} and {results_file} from the CSVs",
                  highlight=False)


if __name__ == "__main__":
    app()
