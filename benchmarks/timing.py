"""How every benchmark times things, summarises the times, and names the machine it ran on.

A timing includes the device's queued work (:func:`synchronizer`), so a GPU's
asynchronous kernels are not mistaken for speed; absolute times are reported
only next to :func:`describe`'s account of the machine.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from natkit.environment import usable_cores

Sync = Callable[[], None]


def no_sync() -> None:
    """Nothing to wait for: host-side work is done when the call returns."""


def synchronizer(device: torch.device) -> Sync:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_sync


def timed(fn: Callable[[], Any], sync: Sync = no_sync) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes, queued device work included, and its result."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def stopwatch() -> Callable[[], float]:
    """A function that returns the seconds since this call, for spans longer than one call."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


class TimedSolver:
    """Wraps a run's solver and records how long each call takes."""

    def __init__(self, solver: Callable[[torch.Tensor], torch.Tensor], sync: Sync) -> None:
        self.solver = solver
        self.sync = sync
        self.seconds: list[float] = []

    def __call__(self, cost: torch.Tensor) -> torch.Tensor:
        seconds, perm = timed(lambda: self.solver(cost), self.sync)
        self.seconds.append(seconds)
        return perm

    def __getattr__(self, name: str) -> Any:
        if name == "solver":  # not set yet (e.g. while copying): no endless recursion
            raise AttributeError(name)
        return getattr(self.solver, name)  # e.g. ``exact``


def median(values: Sequence[float]) -> float:
    """The median: one slow outlier (a page fault, a context switch) does not move it."""
    return statistics.median(values)


def iqr(values: Sequence[float]) -> float:
    """Interquartile range: how much the timings of one case vary, to judge small differences."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q3 - q1


# ---------------------------------------------------------------- the machine


@dataclass(frozen=True)
class Machine:
    """The machine a measurement ran on."""

    cpu: str
    cores: int  # usable by this process, not the host's total
    torch_threads: int
    memory_gb: float | None
    torch: str
    cuda: str | None  # the CUDA device's name
    python: str
    platform: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        """The machine as a results file stored it."""
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


def machine() -> Machine:
    """CPU model, cores, torch threads and version, CUDA device, python and platform."""
    cores = usable_cores()  # what this process may use, not the host's total
    return Machine(
        cpu=_cpu_model(), cores=cores, torch_threads=torch.get_num_threads(),
        memory_gb=_memory_gb(), torch=torch.__version__,
        cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        python=platform.python_version(), platform=platform.platform())


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model"):  # x86, then ARM variants
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _memory_gb() -> float | None:
    """Total RAM in GB (10^9 bytes) from /proc/meminfo, if present."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe(info: Machine) -> str:
    """The machine in one phrase, for the plain statement under the tables."""
    text = (f"{info.cpu} ({info.cores} cores usable, torch {info.torch} on "
            f"{info.torch_threads} threads")
    if info.memory_gb:
        text += f", {info.memory_gb:g} GB RAM"
    text += f"; {info.cuda}" if info.cuda else "; no CUDA device"
    return text + f"), python {info.python}, {info.platform}"
