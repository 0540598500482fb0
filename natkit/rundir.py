"""Run directories: a new run gets a directory of its own, and one process at a time trains in it."""

from __future__ import annotations

import os
from pathlib import Path

from natkit.checkpoint import CHECKPOINT, CONFIG
from natkit.errors import ConfigError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a directory that holds a run, or anything at all: a new run never writes among files."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out: '{run_dir}' exists and is not a directory")
    if (run_dir / CHECKPOINT).exists() or (run_dir / CONFIG).exists():
        raise ConfigError(f"--out: '{run_dir}' already holds a run; resume it with "
                          f"--resume {run_dir} or choose another directory")
    if run_dir.is_dir():
        found = next((p.name for p in sorted(run_dir.iterdir()) if p.name != LOCK), None)
        if found is not None:
            raise ConfigError(f"--out: '{run_dir}' already holds files that are not a natkit run "
                              f"(e.g. '{found}'); choose a new or empty directory")


class RunLock:
    """An exclusive lock on a run directory, held while one process writes to it.

    ``flock`` on ``DIR/.lock``: the kernel releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the process that holds it."""
        if fcntl is None or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"run directory '{self.path.parent}' is in use by natkit process "
                              f"{holder}; wait for it to finish or use another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Let another process write to the directory."""
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
