"""Where a reassigning NAT step's time goes: torch.profiler over Run.train_step, by category.

The parts of a reassignment carry ``natkit.reassign.*`` profiler ranges (see
:mod:`natkit.assignment`); the host blocked on the device (stream/device
synchronisations, blocking copies) is its own category, taken out of the range
it happened in; whatever no category claims is the rest of the step (forward,
backward, optimizer). Device time is the kernels and copies launched under each
range, and the GPU's idle time is the step's wall time that no device event covers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.speed.steps import first_batches
from benchmarks.timing import synchronizer
from natkit import assignment as asg
from natkit import config as cfg
from natkit.engine import Run

STEP_RANGE = "natkit.profile.step"
# the harness's own wait for the step's queued device work; not a sync of natkit's
DRAIN_RANGE = "natkit.profile.drain"
# category -> the profiler range that holds it
RANGES = {"cost matrix": asg.RANGE_COST, "solve": asg.RANGE_SOLVE,
          "validate + stats": asg.RANGE_VALIDATE_SYNC, "P update": asg.RANGE_UPDATE_P,
          "targets (regenerate / gather)": asg.RANGE_TARGETS}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
              "cudaMemcpy", "cudaMemcpy2D")  # blocking; the async copies are queued, not waited on
COPY_CALLS = ("cudaMemcpyAsync", "cudaMemcpy2DAsync")
CATEGORIES = (*RANGES, "copies (host<->device)", "synchronisation", "rest of the step",
              "end-of-step drain (profiler's wait)")


@dataclass(frozen=True)
class ProfileRow:
    """One category's host and device milliseconds per reassignment step."""

    category: str
    host_ms: float
    device_ms: float | None  # None off CUDA


@dataclass(frozen=True)
class StepProfile:
    """A reassigning step broken down by category, averaged over ``steps`` profiled steps."""

    label: str
    overrides: tuple[str, ...]
    device: str
    steps: int
    wall_ms: float
    gpu_idle_ms: float | None
    rows: tuple[ProfileRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for profile.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepProfile:
        """The profile as profile.json stored it."""
        return cls(**{**data, "overrides": tuple(data["overrides"]),
                      "rows": tuple(ProfileRow(**r) for r in data["rows"])})


def _inside(event: Any, window: Any) -> bool:
    return window.start <= event.time_range.start and event.time_range.end <= window.end


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def _device_us(event: Any) -> float:
    return float(getattr(event, "device_time_total", 0.0) or 0.0)


def breakdown(events: Sequence[Any], cuda: bool) -> tuple[float, float | None, dict[str, list]]:
    """Total wall µs of the profiled steps, GPU idle µs in them, and per category [host, device] µs."""
    steps = [e for e in events if e.name == STEP_RANGE and e.device_type == DeviceType.CPU]
    cats: dict[str, list[float]] = {c: [0.0, 0.0] for c in CATEGORIES}
    wall, idle = 0.0, 0.0
    host = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    for step in steps:
        w = step.time_range
        wall += w.end - w.start
        inner = [e for e in host if e is not step and _inside(e, w)]
        drains = [e for e in inner if e.name == DRAIN_RANGE]
        syncs = [e for e in inner if e.name in SYNC_CALLS
                 and not any(_inside(e, d.time_range) for d in drains)]
        copies = [e for e in inner if e.name in COPY_CALLS]
        claimed = 0.0
        for cat, name in RANGES.items():
            for r in (e for e in inner if e.name == name):
                blocked = sum(s.time_range.end - s.time_range.start for s in syncs
                              if _inside(s, r.time_range))
                copying = sum(c.time_range.end - c.time_range.start for c in copies
                              if _inside(c, r.time_range))
                cats[cat][0] += (r.time_range.end - r.time_range.start) - blocked - copying
                cats[cat][1] += _device_us(r)
                claimed += (r.time_range.end - r.time_range.start) - blocked - copying
        for kind, calls in (("synchronisation", syncs), ("copies (host<->device)", copies),
                            ("end-of-step drain (profiler's wait)", drains)):
            spent = sum(c.time_range.end - c.time_range.start for c in calls)
            cats[kind][0] += spent
            claimed += spent
        cats["copies (host<->device)"][1] += sum(
            k.time_range.end - k.time_range.start for k in kernels
            if _inside(k, w) and k.name.startswith("Memcpy"))
        cats["rest of the step"][0] += (w.end - w.start) - claimed
        busy = _union_us([(max(k.time_range.start, w.start), min(k.time_range.end, w.end))
                          for k in kernels if k.time_range.end > w.start and k.time_range.start < w.end])
        idle += (w.end - w.start) - busy
    if cuda:
        ranged = sum(cats[c][1] for c in CATEGORIES if c != "rest of the step")
        busy_total = wall - idle
        cats["rest of the step"][1] = max(busy_total - ranged, 0.0)
    return wall, (idle if cuda else None), cats


def profile_step(overrides: Sequence[str], *, steps: int = 5, warmup: int = 3,
                 label: str = "", wrap_solver: Callable[[Any], Any] | None = None) -> StepProfile:
    """Profile ``steps`` reassigning NAT steps (after ``warmup``) of the configuration ``overrides``."""
    config = cfg.build(overrides=[*overrides, "method=nat"])
    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory(prefix="natkit-profile-") as tmp:
        run = Run(config, Path(tmp) / "nat", console=quiet)
        sync = synchronizer(run.device)
        cuda = run.device.type == "cuda"
        batches = first_batches(run, warmup + steps, on_device=True)
        if wrap_solver is not None:
            run.method.wrap_solver(wrap_solver)
        run.method.force_reassignment(True)
        for i in range(warmup):
            run.train_step(*batches[i])
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for i in range(warmup, warmup + steps):
                # synchronised at the end, so each window holds its step's device work too
                with record_function(STEP_RANGE):
                    run.train_step(*batches[i])
                    with record_function(DRAIN_RANGE):
                        sync()
        run.method.force_reassignment(None)
        wall, idle, cats = breakdown(list(prof.events()), cuda)
    ms = 1e-3 / steps
    rows = tuple(ProfileRow(c, cats[c][0] * ms, cats[c][1] * ms if cuda else None)
                 for c in CATEGORIES)
    return StepProfile(label, tuple(overrides), str(run.device), steps, wall * ms,
                       None if idle is None else idle * ms, rows)


def profile_markdown(profiles: Sequence[StepProfile]) -> str:
    """The profiles as Markdown tables, one per configuration."""
    out = ["#### Where a reassigning NAT step's time goes", ""]
    for p in profiles:
        idle = "-" if p.gpu_idle_ms is None else f"{p.gpu_idle_ms:.3g}"
        out += [f"**{p.label or 'step'}** on {p.device}: mean over {p.steps} profiled "
                f"reassigning steps; wall {p.wall_ms:.3g} ms, GPU idle {idle} ms.", "",
                "| part | host ms | device ms |", "|---|---|---|"]
        out += [f"| {r.category} | {r.host_ms:.3g} | "
                f"{'-' if r.device_ms is None else f'{r.device_ms:.3g}'} |" for r in p.rows]
        out.append("")
    return "\n".join(out)
