"""The ``natkit`` command line: thin wrappers over the library.

Every user mistake surfaces as one line on stderr and exit code 2 (a diverged
run exits with 1, an interrupted one with 130); bugs keep their tracebacks.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

import natkit
from natkit import config as cfg
from natkit.errors import NatkitError

app = typer.Typer(
    name="natkit",
    help="Noise As Targets: train, evaluate and extend alignment-to-targets self-supervision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a NatkitError into one line on stderr and its exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NatkitError as exc:
            message = " ".join(str(exc).split())
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"natkit {natkit.__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """natkit: Noise As Targets as a modular toolkit."""


# ---------------------------------------------------------------- run


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE",
                 help="Override a config key (dotted, value parsed as YAML), e.g. train.lr=0.1. "
                      "Repeatable."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file, applied over the defaults."),
]


def _option_overrides(overrides: list[str] | None, **options: Any) -> list[str]:
    """Dedicated options as ``key=value`` texts, before the explicit --set ones."""
    return [f"{key}={value}" for key, value in options.items() if value is not None] + list(
        overrides or [])


@app.command()
@user_errors
def run(
    backbone: Annotated[str | None, typer.Option(help="Backbone, e.g. alexnet or timm:resnet18.")]
    = None,
    targets: Annotated[str | None, typer.Option(help="Target distribution, e.g. sphere or basis.")]
    = None,
    solver: Annotated[str | None, typer.Option(help="Assignment solver, e.g. hungarian, emd, "
                                                    "sinkhorn or greedy.")] = None,
    preprocess: Annotated[str | None, typer.Option(help="Preprocessor: sobel, clean or highpass.")]
    = None,
    data: Annotated[str | None, typer.Option(help="Dataset, e.g. shapes, digits, imagefolder.")]
    = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (train.epochs).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the whole run.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    mode: Annotated[str | None, typer.Option(help="nat (default) or supervised.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o",
                                                 help="Run directory [default: runs/<time>].")]
    = None,
    config_file: ConfigOption = None,
    overrides: SetOption = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")]
    = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval",
                                           help="Evaluate the features after training.")] = True,
) -> None:
    """Train with Noise As Targets (or supervised), then evaluate the learned features.

    With no options it runs the embedded default: NAT on synthetic shapes with a
    small AlexNet, Sobel input, sphere targets and the Hungarian solver.
    """
    from natkit import engine
    from natkit.evaluation.protocol import evaluate_run

    components = {"backbone": backbone, "targets": targets, "solver": solver,
                  "preprocess": preprocess, "data": data}
    texts = _option_overrides(overrides, **{"train.epochs": epochs, "seed": seed,
                                            "device": device, "mode": mode})
    if resume is not None:
        if out_dir is not None and out_dir != resume:
            raise NatkitError("--out: a resumed run stays in its directory; drop --out")
        changes = None
        if texts or config_file or any(v is not None for v in components.values()):
            saved = engine.read_run_config(resume)
            changes = cfg.build(config_file, texts, base=saved.to_dict(), **components)
        the_run = engine.resume(resume, changes, console=err)
        err.print(f"resuming [bold]{resume}[/] at epoch {the_run.epoch}, step {the_run.step}")
    else:
        config = cfg.build(config_file, texts, **components)
        run_dir = out_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        the_run = engine.start(config, run_dir, console=err)
        err.print(f"run directory [bold]{run_dir}[/]")
    c = the_run.config
    err.print(
        f"{c.mode} on {c.data['name']} ({len(the_run.dataset)} images, "
        f"{the_run.dataset.image_size} px) | {c.preprocess['name']} -> {c.backbone['name']}"
        + (f" | targets {c.targets['name']} (d={c.targets['dim']}) | solver {c.solver['name']}"
           if c.mode == "nat" else f" | loss {c.supervised.loss}")
        + f" | {the_run.device}", highlight=False)
    started = time.perf_counter()
    if not the_run.train():
        raise typer.Exit(130)
    err.print(f"trained in {time.perf_counter() - started:.0f} s")
    results = None
    if evaluate and c.eval.enabled:
        results = evaluate_run(the_run.dir, console=out)["results"]
    the_run.hook.on_run_end(run=the_run, results=results)
    err.print(f"outputs in [bold]{the_run.dir}[/]: config.yaml, metrics.jsonl, checkpoint.pt"
              + (", results.json, eval.json, loss.png, filters.png, neighbours.png"
                 if results is not None else ""))


@app.command("eval")
@user_errors
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by natkit run.")],
) -> None:
    """Re-run the evaluation of a run: probes, results.json, eval.json and plots."""
    from natkit.evaluation.protocol import evaluate_run

    evaluate_run(run_dir, console=out)


# ---------------------------------------------------------------- inspection


class Kind(str, enum.Enum):
    backbones = "backbones"
    targets = "targets"
    solvers = "solvers"
    preprocessors = "preprocessors"
    datasets = "datasets"


@app.command("list")
@user_errors
def list_command(
    kind: Annotated[Kind, typer.Argument(help="Which registry to list.")],
    pattern: Annotated[str, typer.Argument(help="Glob on the names, e.g. 's*'.")] = "*",
) -> None:
    """List the registered components of one kind and the plugin each comes from."""
    from natkit.plugins import registry

    table = Table(title=f"natkit {kind.value}")
    table.add_column("name", style="bold")
    table.add_column("plugin")
    table.add_column("description")
    for entry in registry(kind.value).entries(pattern):
        table.add_row(entry.display_name, entry.plugin, entry.help)
    out.print(table)


@app.command()
@user_errors
def plugins() -> None:
    """List the installed plugins, their versions, and any that failed to load."""
    from natkit.plugins import get_host

    table = Table(title="natkit plugins")
    for column in ("plugin", "distribution", "version", "status"):
        table.add_column(column)
    for info in get_host().plugins():
        table.add_row(info.name, info.distribution, info.version or "-",
                      f"error: {info.error}" if info.error else "ok")
    out.print(table)


@app.command()
@user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by natkit run.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write the weights (.pt).")],
) -> None:
    """Export the trained backbone as a plain state_dict (no prefixes, no head)."""
    from natkit.export import export as export_backbone

    info = export_backbone(run_dir, out_file)
    err.print(f"wrote {out_file} ({info['backbone']}, {info['in_chans']} input channels) and "
              f"{out_file}.json", highlight=False)
    err.print(f"load it with: {info['load_with'].replace('FILE', repr(str(out_file)))}",
              highlight=False)


@app.command("config")
@user_errors
def config_command(
    config_file: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Print the resolved config (defaults, then --config, then --set) as YAML."""
    typer.echo(cfg.dump(cfg.build(config_file, overrides)), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
