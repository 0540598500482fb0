"""The ``natkit`` command line: thin wrappers over the library.

Every user mistake surfaces as one line on stderr and exit code 2 (a diverged
run exits with 1, an interrupted one with 130); bugs keep their tracebacks.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from natkit import config as cfg
from natkit.errors import (
    ConfigError,
    Interrupted,
    NatkitError,
    UnknownComponentError,
    clip,
    did_you_mean,
    one_line,
)
from natkit.kinds import BY_NAME, BY_WORD, TABLE
from natkit.shards import shards as shards_command
from natkit.version import __version__

if TYPE_CHECKING:  # torch is imported only by the commands that need it
    from natkit.distributed import Comm

app = typer.Typer(
    name="natkit",
    help="Noise As Targets: train, evaluate and extend alignment-to-targets self-supervision.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Output piped to a file or a cluster's log is not wrapped: a table keeps its rows on one line
# and a printed command stays one line to copy.
UNWRAPPED_WIDTH = 1000


def console(*, stderr: bool = False) -> Console:
    """A console that wraps at the terminal's width, and never when writing to a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=stderr)
    return Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH)


out = console()
err = console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a NatkitError into one line on stderr and its exit code, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NatkitError as exc:
            typer.echo(f"{exc.prefix}{one_line(str(exc))}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"natkit {__version__}")
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
    typer.Option("--config", "-c", help="YAML config file, applied over the defaults (and the "
                                        "preset)."),
]
PresetOption = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="A named config shipped with natkit, applied first: "
                                        "default, paper, paper-supervised (natkit list presets)."),
]


def _option_overrides(overrides: list[str] | None, **options: Any) -> list[str]:
    """Dedicated options as ``key=value`` texts, before the explicit --set ones."""
    return [f"{key}={value}" for key, value in options.items() if value is not None] + list(
        overrides or [])


def component_options(command: F) -> F:
    """Give a command one ``--<section>`` option per kind of component in natkit.kinds.

    The command receives them together as ``components``, a mapping from config
    section to the name given (or None), so a new kind needs no edit here.
    """
    signature = inspect.signature(command)
    options = [inspect.Parameter(kind.section, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[str | None,
                                                      typer.Option(help=kind.option_help)])
               for kind in TABLE]
    parameters = [p for p in signature.parameters.values() if p.name != "components"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        components = {kind.section: kwargs.pop(kind.section, None) for kind in TABLE}
        return command(*args, components=components, **kwargs)

    hints = typing.get_type_hints(command, include_extras=True)
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name])
               for p in parameters]
    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*options, *keyword], return_annotation=hints.get("return"))
    wrapper.__annotations__ = {p.name: p.annotation for p in (*options, *keyword)}
    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
@component_options
def run(
    components: dict[str, str | None],
    epochs: Annotated[int | None, typer.Option(help="Training epochs (train.epochs).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the whole run.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run directory [default: runs/<time>].")] = None,
    preset: PresetOption = None,
    config_file: ConfigOption = None,
    overrides: SetOption = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval",
                                           help="Evaluate the features after training.")] = True,
) -> None:
    """Train with Noise As Targets (or another method), then evaluate the learned features.

    With no options it runs the embedded default: NAT on synthetic shapes with a
    small AlexNet, Sobel input, sphere targets and the Hungarian solver.

    When a resumed run trains further, the evaluation outputs of the older
    checkpoint are moved aside (results.json to results.stale.json, eval.json to
    eval.stale.json, loss.png to loss.stale.png, ...) so that none of them is
    mistaken for the new checkpoint's.

    Under torchrun (torchrun --nproc_per_node=N -m natkit run ...) the ranks train one
    run together: train.batch_size stays the global batch, rank 0 writes the run
    directory and evaluates.
    """
    from natkit import distributed
    from natkit.builders import read_run_config

    texts = _option_overrides(overrides, **{"train.epochs": epochs, "seed": seed, "device": device})
    if resume is not None:
        if out_dir is not None and out_dir != resume:
            raise NatkitError("--out: a resumed run stays in its directory; drop --out")
        if preset is not None:
            raise NatkitError("--preset: a resumed run keeps the config it started with; drop --preset")
        saved = read_run_config(resume)
        config = cfg.build(config_file, texts, base=saved.to_dict(), **components)
    else:
        config = cfg.build(config_file, texts, preset=preset, **components)
    comm = distributed.from_environment(config.device)
    try:
        # the run records how many processes train it; a checkpoint resumes on any number
        config = dataclasses.replace(config, world_size=comm.world_size)
        _train_and_evaluate(config, comm, resume, out_dir, evaluate)
    finally:
        distributed.shutdown(comm)


def _train_and_evaluate(config: cfg.Config, comm: Comm, resume: Path | None,
                        out_dir: Path | None, evaluate: bool) -> None:
    """`natkit run` once the config and the process group are known."""
    from natkit import lifecycle
    from natkit.outputs import output_errors

    say = err if comm.is_main else Console(stderr=True, quiet=True)
    if resume is not None:
        option = "--resume"
        with output_errors(option, resume):
            the_run = lifecycle.resume(resume, config, console=say, comm=comm)
        say.print(f"resuming [bold]{resume}[/] at epoch {the_run.epoch}, step {the_run.step}")
    else:
        if out_dir is None:  # one name on every rank: rank 0's clock decides
            import torch

            now = comm.broadcast(torch.tensor([time.time()], dtype=torch.float64),
                                 "naming the run directory")
            out_dir = Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.localtime(float(now)))
        option = "--out"
        with output_errors(option, out_dir):
            the_run = lifecycle.start(config, out_dir, console=say, comm=comm)
        say.print(f"run directory [bold]{out_dir}[/]")
    c = the_run.config
    described = the_run.method.describe()
    say.print(
        f"{c.method['name']} on {c.data['name']} ({len(the_run.dataset)} images, "
        f"{the_run.dataset.image_size} px) | {c.preprocess['name']} -> {c.backbone['name']}"
        + (f" | {described}" if described else "") + f" | {the_run.device}"
        + (f" x {comm.world_size} ranks" if comm.distributed else ""), highlight=False)
    try:
        with output_errors(option, the_run.dir):
            outcome = lifecycle.execute(the_run, evaluate=evaluate, console=out, progress=err)
    except Interrupted as exc:
        if comm.is_main:
            _say(str(exc))
        raise typer.Exit(exc.exit_code) from None
    if not outcome.finished:
        raise typer.Exit(130)
    say.print(f"trained in {outcome.seconds:.0f} s")
    if comm.is_main:
        err.print(f"outputs in [bold]{the_run.dir}[/]: {', '.join(outcome.outputs)}")


def _say(message: str) -> None:
    """One line on stderr, never wrapped."""
    typer.echo(message, err=True)


@app.command("eval")
@user_errors
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory made by natkit run.")],
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", metavar="EPOCH|all",
        help="Evaluate the snapshot of this epoch (kept with train.keep_every) into "
             "snapshots/epoch-NNNN.json, or 'all' of them into curve.json and curve.png.")] = None,
) -> None:
    """Re-run the evaluation of a run: probes, results.json, eval.json and plots.

    Progress goes to stderr; Ctrl-C stops it (exit 130) and keeps the previous results.json.
    """
    from natkit.outputs import output_errors

    with output_errors("RUN_DIR", run_dir):
        from natkit import lifecycle

        if checkpoint is None:
            lifecycle.evaluation(run_dir, console=out, progress=err)
            return
        choice = checkpoint.strip().lower()
        if choice != "all" and not choice.isdigit():
            raise ConfigError(f"--checkpoint: expected an epoch number or 'all', got "
                              f"'{clip(checkpoint)}'")
        lifecycle.snapshot_evaluation(run_dir, choice, console=out, progress=err)


# ---------------------------------------------------------------- inspection


PRESET_WORDS = ("presets", "preset")


def registry_kind(text: str) -> str:
    """The registry kind of a `natkit list` argument, singular or plural, in any case."""
    kind = BY_WORD.get(text.strip().lower())
    if kind is None:
        raise UnknownComponentError(
            f"unknown kind '{clip(text)}'"
            f"{did_you_mean(text.strip().lower(), [*BY_WORD, *PRESET_WORDS])}; valid: "
            f"{', '.join(k.plural for k in TABLE)}, presets (or the singular: "
            f"{', '.join(k.aliases[0] if k.name == k.plural else k.name for k in TABLE)}, preset)")
    return kind.name


@app.command("list")
@user_errors
def list_command(
    kind: Annotated[str | None, typer.Argument(
        help="Which registry to list: methods, backbones, targets, solvers, preprocessors or "
             "datasets (the singular works too, e.g. solver); or presets. Without it: the "
             "kinds, and how many of each are installed.")] = None,
    pattern: Annotated[str, typer.Argument(help="Glob on the names, e.g. 's*'.")] = "*",
) -> None:
    """List the registered components of one kind and the plugin each comes from (or the presets)."""
    from natkit import presets
    from natkit.plugins import registry

    if kind is None:
        table = Table(title="natkit components")
        table.add_column("kind", style="bold")
        table.add_column("installed", justify="right")
        table.add_column("list them with")
        for k in TABLE:
            table.add_row(k.plural, str(len(registry(k.name).names())), f"natkit list {k.plural}")
        table.add_row("presets", str(len(presets.names())), "natkit list presets")
        out.print(table)
        return
    if kind.strip().lower() in PRESET_WORDS:
        table = Table(title="natkit presets")
        table.add_column("name", style="bold")
        table.add_column("description")
        for preset in presets.names():
            table.add_row(preset, presets.describe(preset))
        out.print(table)
        return
    name = registry_kind(kind)
    table = Table(title=f"natkit {BY_NAME[name].plural}")
    table.add_column("name", style="bold")
    table.add_column("plugin")
    table.add_column("description")
    for entry in registry(name).entries(pattern):
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
    force: Annotated[bool, typer.Option("--force", "-f",
                                        help="Overwrite the export's files if they exist.")]
    = False,
    batchnorm: Annotated[str, typer.Option(
        help="BatchNorm statistics: recompute (over the training images, as the evaluation "
             "probes) or running (the checkpoint's; needs no data).")] = "recompute",
    device: Annotated[str, typer.Option(help="Where to recompute them: auto, cpu, cuda:N.")] = "auto",
) -> None:
    """Export the trained backbone (a plain state_dict) and an RGB encoder (safetensors).

    --out model.pt writes model.pt, model.pt.json (how to rebuild the backbone),
    model.rgb.safetensors (RGB images in, the preprocessing folded in) and its model card
    model.rgb.json, atomically; existing files are kept unless --force is given.
    """
    from natkit import export as exporting

    info = exporting.export(run_dir, out_file, force=force, batchnorm=batchnorm, device=device,
                            console=err)
    for line in exporting.summary(out_file, info):
        err.print(line, highlight=False, soft_wrap=True)


@app.command("config")
@user_errors
def config_command(
    preset: PresetOption = None,
    config_file: ConfigOption = None,
    overrides: SetOption = None,
) -> None:
    """Print the resolved config (defaults, then --preset, --config and --set) as YAML."""
    typer.echo(cfg.dump(cfg.build(config_file, overrides, preset=preset)), nl=False)


app.command("shards")(user_errors(shards_command))  # its options live in natkit.shards


def main() -> None:
    """Console-script entry point: natkit's commands and those the plugins add."""
    from natkit.plugins import get_host

    get_host().add_commands(app)
    app()
