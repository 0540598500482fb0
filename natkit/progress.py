"""Progress display: rich bars on a terminal; without one, one line per epoch (training) and
one line per phase and step (evaluation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Shows batches of the current epoch with loss, lr and throughput."""

    def __init__(self, console: Console, total_epochs: int) -> None:
        self.console = console
        self.total_epochs = total_epochs
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task: int | None = None

    def __enter__(self) -> TrainingProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.__exit__(kind, exc, tb)

    def start_epoch(self, epoch: int, batches: int, done: int = 0) -> None:
        """Begin the bar of ``epoch`` (0-based) at ``done`` of ``batches``."""
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(
            f"epoch {epoch + 1}/{self.total_epochs}", total=batches, completed=done,
            loss="-", lr="-", speed="",
        )

    def advance(self, loss: float | None, lr: float, images_per_s: float | None) -> None:
        """One batch done; numbers shown are the latest known."""
        if self._task is None:
            return
        fields = {"lr": f"{lr:.4g}"}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if images_per_s:
            fields["speed"] = f"{images_per_s:,.0f} img/s"
        self._progress.update(self._task, advance=1, **fields)

    def log(self, message: str) -> None:
        """Print a line above the bar."""
        self.console.print(message, highlight=False)

    def log_epoch(self, summary: dict[str, Any], epochs: int) -> None:
        """One line for a finished epoch, from its metrics.jsonl record."""
        changed = (f"  changed {summary['changed']:.1%}" if summary["changed"] is not None
                   else "")
        self.log(f"epoch {summary['epoch'] + 1}/{epochs}  loss {summary['loss']:.4f}{changed}  "
                 f"lr {summary['lr']:.4g}  {summary['images_per_s']:,.0f} img/s  "
                 f"{summary['seconds']:.1f} s")


# ---------------------------------------------------------------- evaluation

HEARTBEAT_SECONDS = 15.0  # plain output: the longest silence within a phase
PREFIX = "evaluating: "


@dataclass(frozen=True)
class Phase:
    """One planned phase of an evaluation.

    ``kind`` groups phases that run at the same speed per unit (the same probe on
    the trained and the random-init network, feature extraction of either), so
    the time a finished phase took per unit estimates the phases still to come.
    """

    key: str  # unique within a plan, e.g. "linear/trained"
    label: str  # shown to the user, e.g. "linear probe (trained)"
    kind: str  # e.g. "features", "linear", "mlp", "knn", "plots"
    units: int  # the work it holds, e.g. images, fits or epochs
    unit: str = "steps"
    announce_steps: bool = True  # plain output: one line per step (fit) within the phase
    estimated: bool = True  # counted in the remaining-time estimate (not for short ones)


def format_seconds(seconds: float) -> str:
    """A rough duration: 'under 1 s', '40 s', '3 min 20 s', '2 h 5 min'."""
    s = max(0, round(seconds))
    if s < 1:
        return "under 1 s"
    if s < 60:
        return f"{s} s"
    if s < 600:
        return f"{s // 60} min {s % 60} s"
    minutes = round(s / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


class EvalProgress:
    """Progress of an evaluation: rich bars on a terminal, plain one-line messages otherwise.

    The evaluation announces each planned :class:`Phase` with :meth:`phase`, the
    steps within it (a probe's fits) with :meth:`step`, and its work with
    :meth:`advance`; :meth:`tick` says it is still busy without finishing a unit.
    Without a terminal every phase and step is a line ``evaluating: ...`` and a
    long phase prints its count at least every :data:`HEARTBEAT_SECONDS`. Lines
    end with an estimate of the whole evaluation's remaining time once every
    kind of phase still to come has been timed.
    """

    def __init__(self, console: Console, phases: list[Phase], *,
                 heartbeat: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.console = console
        self.phases = list(phases)
        self.heartbeat = HEARTBEAT_SECONDS if heartbeat is None else heartbeat
        self.clock = clock
        self.rich = console.is_terminal
        self._index = -1  # the current phase
        self._done = 0  # units of the current phase
        self._detail = ""
        self._seconds: dict[str, float] = {}  # per kind
        self._units: dict[str, int] = {}  # per kind, finished
        self._started = self._mark = self._printed = clock()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[left]}"),
            console=console,
            transient=True,
            disable=not self.rich,
        )
        self._overall: int | None = None
        self._task: int | None = None

    def __enter__(self) -> EvalProgress:
        self._progress.__enter__()
        if self.rich:
            self._overall = self._progress.add_task("evaluation", total=len(self.phases),
                                                    left="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._account()
        self._progress.__exit__(kind, exc, tb)

    @property
    def current(self) -> Phase | None:
        return self.phases[self._index] if 0 <= self._index < len(self.phases) else None

    def _account(self) -> None:
        """Charge the time since the last mark to the current phase's kind."""
        now = self.clock()
        phase = self.current
        if phase is not None:
            self._seconds[phase.kind] = self._seconds.get(phase.kind, 0.0) + now - self._mark
        self._mark = now

    def _rate(self, kind: str) -> float | None:
        done = self._units.get(kind, 0)
        return self._seconds[kind] / done if done else None

    def remaining(self) -> float | None:
        """Seconds the rest of the evaluation should take, or None while it cannot be told."""
        if self._index < 0:
            return None
        self._account()
        total = 0.0
        for i in range(self._index, len(self.phases)):
            phase = self.phases[i]
            if not phase.estimated:
                continue
            rate = self._rate(phase.kind)
            if rate is None:
                return None
            left = phase.units - (self._done if i == self._index else 0)
            total += max(left, 0) * rate
        return total

    def _left(self) -> str:
        left = self.remaining()
        if left is None:
            return ""
        text = format_seconds(left)
        return f"{text} left" if text.startswith("under") else f"about {text} left"

    def _say(self, text: str) -> None:
        self._printed = self.clock()
        if self.rich:
            return
        left = self._left()
        self.console.print(f"{PREFIX}{text}" + (f" ({left})" if left else ""), highlight=False,
                           markup=False, soft_wrap=True)

    def _refresh(self) -> None:
        if not self.rich or self._task is None:
            return
        phase = self.current
        description = phase.label + (f": {self._detail}" if self._detail else "")
        self._progress.update(self._task, description=description, completed=self._done)
        if self._overall is not None:
            self._progress.update(self._overall, completed=self._index, left=self._left())

    def phase(self, key: str) -> None:
        """Begin the planned phase ``key`` (ending the current one)."""
        self._account()
        index = next(i for i, p in enumerate(self.phases) if p.key == key)
        self._index, self._done, self._detail = index, 0, ""
        phase = self.phases[index]
        if self.rich:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(phase.label, total=phase.units, left="")
            self._refresh()
        if not phase.announce_steps:  # otherwise its first step says it at once
            self._say(f"{phase.label} ...")

    def step(self, detail: str) -> None:
        """A step within the current phase, e.g. one fit of a probe."""
        phase = self.current
        if phase is None:
            return
        self._detail = detail
        self._refresh()
        if phase.announce_steps:
            self._say(f"{phase.label}: {detail} ...")

    def advance(self, units: int = 1) -> None:
        """``units`` of the current phase's work are done."""
        phase = self.current
        if phase is None:
            return
        self._account()
        self._done += units
        self._units[phase.kind] = self._units.get(phase.kind, 0) + units
        self._refresh()
        self.tick()

    def tick(self) -> None:
        """Still working: without a terminal, print the count after a long silence."""
        phase = self.current
        if phase is None or self.rich or self.clock() - self._printed < self.heartbeat:
            return
        detail = f", {self._detail}" if self._detail and phase.announce_steps else ""
        self._say(f"{phase.label}{detail}: {self._done}/{phase.units} {phase.unit}")

    def finish(self) -> float:
        """End the last phase; returns the seconds the whole evaluation took."""
        self._account()
        self._index = len(self.phases)
        return self.clock() - self._started
