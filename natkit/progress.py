"""Progress display: a rich bar on a terminal, one line per epoch everywhere."""

from __future__ import annotations

from types import TracebackType

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
