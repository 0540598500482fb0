"""A run's life, from start (or resume) to its evaluated outputs: one owner, whoever calls it.

The CLI's ``natkit run``, the benchmark harness and a user's script all go
through here, so every run starts, resumes, retires stale results, evaluates
and fires ``on_run_start`` / ``on_run_end`` the same way:

* :func:`start` makes a new run directory; :func:`resume` reopens one from its
  checkpoint; :func:`open_run` does whichever the directory calls for.
* :func:`execute` fires ``on_run_start``, trains, moves aside the evaluation of
  an older checkpoint, evaluates (rank 0, in one process), fires
  ``on_run_end`` on every way out, and returns an :class:`Outcome`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from natkit import config as cfg
from natkit import distributed, files
from natkit.builders import read_run_config
from natkit.checkpoint import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RESULTS,
    SNAPSHOTS,
    load_checkpoint,
    restore_run_state,
)
from natkit.distributed import SINGLE, Comm
from natkit.engine import Run
from natkit.environment import ENVIRONMENT, describe
from natkit.errors import CheckpointError, ConfigError, Interrupted
from natkit.evaluation.outputs import OUTPUTS as EVALUATION_OUTPUTS
from natkit.evaluation.outputs import retire_outputs
from natkit.evaluation.preflight import check_evaluable
from natkit.evaluation.protocol import evaluate_run
from natkit.metrics import truncate_metrics
from natkit.rundir import RunLock, check_new_run_dir
from natkit.signals import Terminated, terminate_as_interrupt
from natkit.tally import EpochTally

# Settings a resumed run may change: how it runs, not what it trains (world_size and
# train.sync_bn change BatchNorm statistics and dropout pairing, see docs/scaling.md).
RESUMABLE_CHANGES = ("device", "world_size", "train.epochs", "train.num_workers",
                     "train.log_every", "train.checkpoint_every", "train.keep_every",
                     "train.channels_last", "train.compile", "train.sync_bn")

# What a run directory may hold when its life ends, in the order a person reads them.
OUTPUTS = (CONFIG, ENVIRONMENT, METRICS, CHECKPOINT, *EVALUATION_OUTPUTS, f"{SNAPSHOTS}/")


@dataclass(frozen=True)
class Outcome:
    """How a run's life ended."""

    run: Run
    finished: bool  # False: stopped early (Ctrl-C, SIGTERM), with a checkpoint saved
    results: dict[str, Any] | None  # results.json, when the run was evaluated
    seconds: float  # spent training in this process
    retired: tuple[tuple[str, Path], ...] = ()  # older evaluation outputs moved aside

    @property
    def outputs(self) -> list[str]:
        """The files the run directory holds now, among those a run writes."""
        return [name for name in OUTPUTS if (self.run.dir / name).exists()]


def start(config: cfg.Config, run_dir: Path, *, console: Console | None = None,
          comm: Comm = SINGLE) -> Run:
    """Create a run directory (refusing one that already holds a run) and a fresh run.

    Under torchrun every rank checks the directory and builds the run; rank 0 alone
    writes it.
    """
    run_dir = Path(run_dir)
    check_new_run_dir(run_dir)
    run = _build(config, run_dir, console, None, comm)
    comm.barrier("checking the run directory")  # before rank 0 writes into it
    if not comm.is_main:
        comm.barrier("writing config.yaml")
        return run
    run_dir.mkdir(parents=True, exist_ok=True)
    run.lock.acquire()
    try:
        check_new_run_dir(run_dir)  # again under the lock: another start may have won the race
        files.write_text(run_dir / CONFIG, cfg.dump(config))
        _record_environment(run)
    except BaseException:
        run.lock.release()
        raise
    (run_dir / METRICS).unlink(missing_ok=True)
    comm.barrier("writing config.yaml")
    return run


def resume(run_dir: Path, changes: cfg.Config | None = None, *,
           console: Console | None = None, comm: Comm = SINGLE) -> Run:
    """Reopen a run from its checkpoint; ``changes`` may alter only RESUMABLE_CHANGES.

    A checkpoint does not depend on the number of ranks: a run trained under
    torchrun resumes in one process, or on another number of ranks, and back.
    """
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    # the number of ranks is how this resume runs, not part of what it computes
    changes = dataclasses.replace(changes or saved, world_size=comm.world_size)
    lock = RunLock(run_dir)
    if comm.is_main:
        lock.acquire()  # before anything is truncated or rewritten
    try:
        run = _reopen(run_dir, saved, changes, lock, console, comm)
    except BaseException:
        lock.release()
        raise
    comm.barrier("resuming")  # rank 0 has rewritten config.yaml and metrics.jsonl
    return run


def open_run(config: cfg.Config, run_dir: Path, *, console: Console | None = None,
             comm: Comm = SINGLE) -> Run:
    """Resume ``run_dir`` if it holds a checkpoint (with ``config``'s resumable changes), else start it."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        return start(config, run_dir, console=console, comm=comm)
    saved = read_run_config(run_dir)
    changed = cfg.difference(saved.to_dict(), config.to_dict())
    return resume(run_dir, config if changed else None, console=console, comm=comm)


def _build(config: cfg.Config, run_dir: Path, console: Console | None, lock: RunLock | None,
           comm: Comm) -> Run:
    run = Run(config, run_dir, console=console, lock=lock, comm=comm)
    check_evaluable(config, run.dataset, run.model.backbone.tap_names)  # fail now, not after
    return run


def _reopen(run_dir: Path, saved: cfg.Config, changes: cfg.Config, lock: RunLock,
            console: Console | None, comm: Comm) -> Run:
    if comm.is_main:
        files.remove_temporaries(run_dir)  # a write cut short by a kill; the old file is intact
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path) if path.exists() else None
    if state is not None and state.get("config") is not None:
        # a resume may have changed a resumable setting in config.yaml since the checkpoint
        edited = [key for key in cfg.difference(state["config"], saved.to_dict())
                  if key not in RESUMABLE_CHANGES]
        if edited:
            raise CheckpointError(f"'{run_dir / CONFIG}' no longer matches its checkpoint "
                                  f"({edited[0]} differs); restore it or start a new run")
    changed = cfg.difference(saved.to_dict(), changes.to_dict())
    fixed = [key for key in changed if key not in RESUMABLE_CHANGES]
    if fixed:
        raise ConfigError(f"--resume: {fixed[0]} differs from the run's config.yaml; a resumed "
                          f"run may only change {', '.join(RESUMABLE_CHANGES)}")
    run = _build(changes, run_dir, console, lock, comm)
    if state is not None:
        per_epoch = len(run.dataset) // changes.train.batch_size
        restore_run_state(run, state, path, per_epoch)
        try:
            run.tally = EpochTally.fresh(run.device, **state.get("epoch_sums", {}))
        except (TypeError, ValueError, RuntimeError):  # not the totals a checkpoint saves
            raise CheckpointError(f"checkpoint '{path}' does not fit this run's config: its "
                                  "epoch_sums are not an epoch's totals") from None
    if comm.is_main:
        _record_environment(run)
        truncate_metrics(run_dir / METRICS, run.step)
        if changed:
            files.write_text(run_dir / CONFIG, cfg.dump(changes))
    return run


def execute(run: Run, *, evaluate: bool = True, console: Console | None = None,
            progress: Console | None = None) -> Outcome:
    """Train ``run`` to its last epoch, then evaluate it (when ``evaluate`` and ``eval.enabled``).

    Fires ``on_run_start`` before training and ``on_run_end`` on every way out
    (``results`` None unless evaluated). When training changed the checkpoint,
    the evaluation outputs of the older one are moved aside first. Under torchrun
    the ranks leave their process group together after training and rank 0 alone
    evaluates. ``console`` takes the results table, ``progress`` the evaluation's
    progress (both stderr by default).
    """
    comm = run.comm
    results: dict[str, Any] | None = None
    try:
        run.hook.on_run_start(run=run.view())
        started, before = time.perf_counter(), _identity(run.checkpoint_path)
        retired: list[tuple[str, Path]] = []
        try:
            # the lock stays held (rank 0) to the end of the run's life, evaluation included
            finished = run.train(release_lock=False)
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, mid-step
            raise Interrupted(f"interrupted: training stopped at once; the last checkpoint saved "
                              f"is kept in {run.checkpoint_path}; resume with: natkit run "
                              f"--resume {run.dir}") from None
        finally:
            # gloo aborts a rank whose group goes while DDP's reducer still holds it: drop DDP
            # first, on every way out of training
            run.release_ranks()
            if comm.is_main and _identity(run.checkpoint_path) != before:
                retired = retire_outputs(run.dir)
                _announce(run, retired, evaluating=evaluate and run.config.eval.enabled)
        seconds = time.perf_counter() - started
        if finished:
            # every rank leaves the group together (gloo aborts a rank that leaves while a peer
            # still sends); rank 0 then evaluates in one process (see docs/scaling.md)
            comm.barrier("finishing training")
            distributed.shutdown(comm)
            if comm.is_main and evaluate and run.config.eval.enabled:
                results = evaluation(run.dir, console=console, progress=progress,
                                     locked=True)["results"]
        return Outcome(run, finished, results, seconds, tuple(retired))
    finally:
        run.release_ranks()
        try:
            run.hook.on_run_end(run=run.view(), results=results)
        finally:
            run.lock.release()


def evaluation(run_dir: Path, *, console: Console | None = None,
               progress: Console | None = None, locked: bool = False) -> dict[str, Any]:
    """Evaluate a run directory's checkpoint; Ctrl-C or SIGTERM raises Interrupted saying what is kept.

    The run's lock is held meanwhile (``locked``: the caller holds it already): a run
    that is still training is refused, as its checkpoint would change under the
    evaluation, and it cannot start meanwhile.
    """
    before = _identity(run_dir / RESULTS)

    def kept() -> str:
        after = _identity(run_dir / RESULTS)
        if after is None:
            return f"{run_dir / CHECKPOINT} is intact and {RESULTS} was not written"
        if after == before:
            return f"{run_dir / CHECKPOINT} is intact and the previous {RESULTS} is kept"
        return f"{run_dir / CHECKPOINT} is intact and {RESULTS} was written just before"

    work = functools.partial(evaluate_run, run_dir, console=console, progress=progress)
    return _stoppable(run_dir, work, kept, f"natkit eval {run_dir}", locked=locked)


def snapshot_evaluation(run_dir: Path, choice: str, *, console: Console | None = None,
                        progress: Console | None = None) -> Any:
    """Evaluate one kept snapshot (an epoch number) or all of them (``'all'``), the lock held."""
    from natkit.evaluation.snapshots import evaluate_curve, evaluate_snapshot

    work = (functools.partial(evaluate_curve, run_dir) if choice == "all"
            else functools.partial(evaluate_snapshot, run_dir, int(choice)))
    return _stoppable(run_dir, functools.partial(work, console=console, progress=progress),
                      lambda: "the run's checkpoints are intact",
                      f"natkit eval {run_dir} --checkpoint {choice}")


def _stoppable(run_dir: Path, work: Callable[[], Any], kept: Callable[[], str], again: str, *,
               locked: bool = False) -> Any:
    """``work()`` under the run's lock; Ctrl-C or SIGTERM become one Interrupted line."""
    try:
        with terminate_as_interrupt(), contextlib.nullcontext() if locked else holding(run_dir):
            return work()
    except KeyboardInterrupt as stop:
        interrupted = Interrupted(f"{_cause(stop)}: evaluation stopped; {kept()}; evaluate again "
                                  f"with: {again}")
        interrupted.exit_code = 143 if isinstance(stop, Terminated) else 130
        raise interrupted from None


@contextlib.contextmanager
def holding(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock inside the block (ConfigError if a process trains there)."""
    read_run_config(run_dir)  # a missing or foreign directory: say so before locking it
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _cause(stop: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


def _record_environment(run: Run) -> None:
    """Add this start's (or resume's) software, hardware and git commit to environment.json."""
    path = run.dir / ENVIRONMENT
    try:
        sessions = json.loads(path.read_text())["sessions"]
        sessions = sessions if isinstance(sessions, list) else []
    except (OSError, ValueError, KeyError, TypeError):
        sessions = []  # none yet, or not ours: start the record again
    entry = {**describe(run.device, run.comm.world_size), "epoch": run.epoch, "step": run.step}
    files.write_json(path, {"sessions": [*sessions, entry]})


def _announce(run: Run, retired: list[tuple[str, Path]], *, evaluating: bool) -> None:
    if retired:
        moved = ", ".join(f"{old} -> {new.name}" for old, new in retired)
        hint = "" if evaluating else f"; evaluate this one with: natkit eval {run.dir}"
        run.console.print(f"the checkpoint changed: moved the previous evaluation aside ({moved}), "
                          f"as it describes an earlier checkpoint{hint}",
                          soft_wrap=True, highlight=False, markup=False)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced (atomic writes give it a new inode), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
