"""The natkit entry point of natkit-wandb: lifecycle hooks that log a run to Weights & Biases.

One W&B run per natkit run, kept in RUN_DIR/wandb, offline unless the user is logged
in (:mod:`natkit_wandb.login`; ``WANDB_MODE`` decides when set). At the run's step
(``run.step``) as W&B's step, it logs:

- the scalars of :mod:`natkit.tracking`: each logging step's ``train/`` record,
  each reassignment's ``reassign/`` statistics, each epoch's ``epoch/`` summary and,
  after an evaluation, results.json's ``probe/`` leaves (also the run's summary);
- after an evaluation, the plots it drew (``plots/loss``, ``plots/filters``,
  ``plots/neighbours``) as images;
- the resolved config as the W&B run's config (nested: the UI shows ``train.lr``).

The W&B run's id is kept in RUN_DIR/wandb/run-id, so a resumed natkit run resumes the
same W&B run. Logging never costs the run: a failure (wandb missing, a directory that
cannot be written, an error of wandb) is one warning, and the run goes on without W&B.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import natkit
from natkit import files, tracking
from natkit.errors import one_line
from natkit.files import describe_os_error
from natkit_wandb.login import choose_mode, disabled

LOG_DIR = "wandb"  # wandb.init(dir=RUN_DIR) keeps its files in RUN_DIR/wandb
RUN_ID = "run-id"  # RUN_DIR/wandb/run-id: the W&B run a resumed natkit run continues
PROJECT = "natkit"  # unless WANDB_PROJECT says otherwise
PLUGIN = "natkit-wandb"


class LoggingStopped(UserWarning):
    """natkit-wandb stopped logging a run; the run itself went on."""


# Per run, so that several runs in one process (tests, notebooks) never share a W&B run;
# weak keys, so a finished run's goes with it. None: logging stopped for that run.
_runs: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
# per run: the exception being handled when it started (a caller's retry loop, a notebook cell)
_handled_at_start: weakref.WeakKeyDictionary[Any, BaseException | None] = weakref.WeakKeyDictionary()


def _reason(exc: Exception) -> str:
    """Why logging stopped, in one line."""
    if isinstance(exc, ImportError):
        return f"cannot import wandb ({exc}); install it with: pip install wandb"
    if isinstance(exc, OSError):
        where = f"'{exc.filename}': " if exc.filename else ""
        return f"{where}{describe_os_error(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _stop(run: Any, exc: Exception) -> None:
    """Stop logging ``run``: finish its W&B run as failed (whatever that raises) and warn once."""
    logger, _runs[run] = _runs.get(run), None
    if logger is not None:
        with contextlib.suppress(Exception):
            logger.finish(exit_code=1)
    warnings.warn(one_line(f"{PLUGIN}: logging stopped: {_reason(exc)}; the run goes on "
                           "without it"), LoggingStopped, stacklevel=2)


@contextlib.contextmanager
def _logging(run: Any) -> Iterator[None]:
    """Run a hook's logging; an error stops logging for this run instead of ending the run."""
    try:
        yield
    except Exception as exc:  # a logger must never take a run down
        _stop(run, exc)


def _log(run: Any, values: dict[str, Any]) -> None:
    logger = _runs.get(run)
    if logger is None or not values:
        return
    with _logging(run):
        # W&B gathers what is logged at one step into one row, written when the step moves on
        logger.log(values, step=run.step)


def _read_id(path: Path) -> str | None:
    """The W&B run id kept in the run directory, or None (a new natkit run)."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


@natkit.hookimpl
def on_run_start(run: Any) -> None:
    """Start (or resume) the run's W&B run; wandb is imported here."""
    _finish(run)  # a view started again (not natkit's loop): its old W&B run ends first
    # an exception the caller is handling when the run starts is not the run's failure
    _handled_at_start[run] = sys.exc_info()[1]
    if disabled():
        return
    with _logging(run):
        import wandb

        options: dict[str, Any] = {}
        mode = choose_mode()
        if mode is not None:
            options["mode"] = mode
        if not os.environ.get("WANDB_PROJECT"):
            options["project"] = PROJECT
        if not os.environ.get("WANDB_NAME"):
            options["name"] = run.dir.name
        folder = run.dir / LOG_DIR
        folder.mkdir(exist_ok=True)  # here, where a refusal names the run's own directory
        run_id = _read_id(folder / RUN_ID)
        if run_id is not None:
            options.update(id=run_id, resume="allow")
        logger = wandb.init(
            dir=str(run.dir), config=run.config.to_dict(),
            allow_val_change=True,  # a resume may change train.epochs and the like
            reinit="create_new",  # one W&B run per natkit run, whatever else the process runs
            settings=wandb.Settings(console="off"),  # natkit's progress display keeps the terminal
            **options)
        _runs[run] = logger
        if run_id is None:
            files.write_text(folder / RUN_ID, f"{logger.id}\n")


@natkit.hookimpl
def on_step_end(run: Any, metrics: dict[str, Any]) -> None:
    """Log a logging step's loss, learning rate and speed."""
    _log(run, tracking.numbers(metrics, tracking.TRAIN))


@natkit.hookimpl
def on_reassign(run: Any, metrics: dict[str, Any]) -> None:
    """Log what the method reported when it reassigned targets."""
    _log(run, tracking.numbers(metrics, tracking.REASSIGN))


@natkit.hookimpl
def on_epoch_end(run: Any, metrics: dict[str, Any]) -> None:
    """Log the epoch's summary."""
    _log(run, tracking.numbers(metrics, tracking.EPOCH))


@natkit.hookimpl
def on_run_end(run: Any, results: dict[str, Any] | None) -> None:
    """Log the evaluation (results and plots) when there was one, then finish the W&B run."""
    if _runs.get(run) is not None and results is not None:
        _log(run, tracking.results(results))
        with _logging(run):
            _log(run, _plots(run))
    _finish(run)


def _plots(run: Any) -> dict[str, Any]:
    """The evaluation's plots as W&B images, those it drew."""
    import wandb

    from natkit.evaluation.outputs import PLOTS

    paths = [run.dir / name for name in PLOTS]
    return {f"{tracking.PLOTS}/{p.stem}": wandb.Image(str(p)) for p in paths if p.is_file()}


def _finish(run: Any) -> None:
    """Finish the run's W&B run, if it has one: failed when the natkit run is ending in an error."""
    logger = _runs.get(run)
    if logger is not None:
        with _logging(run):
            # on_run_end fires on every way out: an exception on its way up means the run failed
            raised = sys.exc_info()[1]
            failed = raised is not None and raised is not _handled_at_start.get(run)
            logger.finish(exit_code=1 if failed else 0)
    _runs.pop(run, None)
    _handled_at_start.pop(run, None)
