"""The natkit entry point of natkit-tensorboard: lifecycle hooks that log a run to RUN_DIR/tensorboard.

At the run's step (``run.step``) as the global step, one ``SummaryWriter`` per run writes:

- the scalars of :mod:`natkit.tracking`: each logging step's ``train/``
  record, each reassignment's ``reassign/`` statistics, each epoch's ``epoch/`` summary
  and, after an evaluation, results.json's ``probe/`` leaves;
- after an evaluation, the plots it drew (``plots/loss``, ``plots/filters``,
  ``plots/neighbours``) as images;
- the resolved config as hyperparameters (the HParams dashboard), in the run's own event
  files rather than in the extra sub-run ``SummaryWriter.add_hparams`` would make.

A resumed run writes to the same directory with ``purge_step`` just after its checkpoint,
so that TensorBoard hides what a killed run wrote after the checkpoint and the resumed run
writes again. Logging never costs the run: a failure (TensorBoard missing, a directory
that cannot be written, an error of the writer) is one warning, and the run goes on
without TensorBoard.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import natkit
from natkit import tracking
from natkit.errors import one_line
from natkit.files import describe_os_error

LOG_DIR = "tensorboard"  # RUN_DIR/tensorboard
PLUGIN = "natkit-tensorboard"


class LoggingStopped(UserWarning):
    """natkit-tensorboard stopped logging a run; the run itself went on."""


# Per run, so that several runs in one process (tests, notebooks) never share a writer; weak
# keys, so a finished run's writer goes with it. None: logging stopped for that run.
_writers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _reason(exc: Exception) -> str:
    """Why logging stopped, in one line."""
    if isinstance(exc, ImportError):
        return f"cannot import TensorBoard ({exc}); install it with: pip install tensorboard"
    if isinstance(exc, OSError):
        where = f"'{exc.filename}': " if exc.filename else ""
        return f"{where}{describe_os_error(exc)}"
    return f"{type(exc).__name__}: {exc}"


def _stop(run: Any, exc: Exception) -> None:
    """Stop logging ``run``: close its writer (whatever it raises) and warn once."""
    writer, _writers[run] = _writers.get(run), None
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()
    warnings.warn(one_line(f"{PLUGIN}: logging stopped: {_reason(exc)}; the run goes on "
                           "without it"), LoggingStopped, stacklevel=2)


@contextlib.contextmanager
def _logging(run: Any) -> Iterator[None]:
    """Run a hook's logging; an error stops logging for this run instead of ending the run."""
    try:
        yield
    except Exception as exc:  # a logger must never take a run down
        _stop(run, exc)


def _add_scalars(run: Any, values: dict[str, float]) -> None:
    writer = _writers.get(run)
    if writer is None or not values:
        return
    with _logging(run):
        for tag, value in values.items():
            writer.add_scalar(tag, value, run.step)


@natkit.hookimpl
def on_run_start(run: Any) -> None:
    """Open the run's writer (TensorBoard is imported here) and record its config."""
    _close(run)  # a view started again (not natkit's loop): its old writer goes first
    with _logging(run):
        from tensorboard.plugins.hparams import summary_v2
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what was written after its checkpoint (steps > run.step), a run
        # resumed before its first checkpoint all that a killed start wrote
        writer = SummaryWriter(str(run.dir / LOG_DIR), purge_step=run.step + 1)
        _writers[run] = writer
        writer.file_writer.add_summary(summary_v2.hparams_pb(tracking.hparams(run.config)), run.step)
        writer.flush()


@natkit.hookimpl
def on_step_end(run: Any, metrics: dict[str, Any]) -> None:
    """Log a logging step's loss, learning rate and speed."""
    _add_scalars(run, tracking.numbers(metrics, tracking.TRAIN))


@natkit.hookimpl
def on_reassign(run: Any, metrics: dict[str, Any]) -> None:
    """Log what the method reported when it reassigned targets."""
    _add_scalars(run, tracking.numbers(metrics, tracking.REASSIGN))


@natkit.hookimpl
def on_epoch_end(run: Any, metrics: dict[str, Any]) -> None:
    """Log the epoch's summary, and write the events out: the epoch's checkpoint is on disk."""
    _add_scalars(run, tracking.numbers(metrics, tracking.EPOCH))
    writer = _writers.get(run)
    if writer is not None:
        with _logging(run):
            writer.flush()


@natkit.hookimpl
def on_run_end(run: Any, results: dict[str, Any] | None) -> None:
    """Log the evaluation (results and plots) when there was one, then close the writer."""
    writer = _writers.get(run)
    if writer is not None and results is not None:
        _add_scalars(run, tracking.results(results))
        with _logging(run):
            _add_plots(writer, run)
    _close(run)


def _add_plots(writer: Any, run: Any) -> None:
    """The evaluation's plots as images, those it drew."""
    import numpy as np
    from PIL import Image

    from natkit.evaluation.outputs import PLOTS

    for name in PLOTS:
        path = run.dir / name
        if path.is_file():
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.add_image(f"{tracking.PLOTS}/{path.stem}", pixels, run.step, dataformats="HWC")


def _close(run: Any) -> None:
    """Flush and close the run's writer, if it has one."""
    if _writers.get(run) is not None:
        with _logging(run):
            _writers[run].close()
    _writers.pop(run, None)
