"""The whole speed suite in one call, sized for the machine: solvers, steps, memory, switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from benchmarks.candidates import candidate_solvers
from benchmarks.distributed import DistributedResult, distributed_speed
from benchmarks.speed.memory import MemoryRow, assignment_memory
from benchmarks.speed.profile import StepProfile, profile_step
from benchmarks.speed.solvers import SolverTiming, solver_speed
from benchmarks.speed.steps import (
    CUDA_SWITCHES,
    PAPER_STEP_OVERRIDES,
    StepTiming,
    SwitchTiming,
    step_cases,
    step_speed,
    switch_speed,
)
from benchmarks.timing import Machine, machine, stopwatch, timed
from natkit import builders


@dataclass(frozen=True)
class SpeedResult:
    """Every measurement of one run of the suite, the settings it ran with and what each part
    took (``seconds``: part -> seconds, and "total")."""

    machine: Machine
    quick: bool
    settings: dict[str, dict[str, Any]]  # each measurement's arguments
    solvers: tuple[SolverTiming, ...]
    steps: tuple[StepTiming, ...]
    memory: tuple[MemoryRow, ...]
    switches: tuple[SwitchTiming, ...] = ()
    distributed: DistributedResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    profiles: tuple[StepProfile, ...] = ()
    session: bool = False

    @property
    def step(self) -> StepTiming | None:
        """The first configuration's step: the embedded default's."""
        return self.steps[0] if self.steps else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for speed.json (``step`` too, as older readers expect)."""
        data = asdict(self)
        data["step"] = data["steps"][0] if self.steps else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedResult:
        """The result as speed.json stored it (older files have ``step`` alone, no switches or
        distributed row)."""
        steps = data.get("steps") or ([data["step"]] if data.get("step") else [])
        spread = data.get("distributed")
        return cls(
            machine=Machine.from_dict(data["machine"]), quick=bool(data.get("quick")),
            settings=data.get("settings", {}),
            solvers=tuple(SolverTiming.from_dict(r) for r in data.get("solvers") or ()),
            steps=tuple(StepTiming.from_dict(s) for s in steps),
            memory=tuple(MemoryRow.from_dict(r) for r in data.get("memory") or ()),
            switches=tuple(SwitchTiming.from_dict(r) for r in data.get("switches") or ()),
            distributed=DistributedResult.from_dict(spread) if spread else None,
            seconds=data.get("seconds", {}),
            profiles=tuple(StepProfile.from_dict(p) for p in data.get("profiles") or ()),
            session=bool(data.get("session")))


def _arguments(quick: bool, device: torch.device) -> dict[str, dict[str, Any]]:
    """Each measurement's arguments: tiny ones for a smoke run, more on a CUDA device."""
    if quick:
        return {"solver_speed": {"sizes": (16, 32, 64), "repeats": 3, "dim": 64, "budget_s": 2.0},
                "step_speed": {"steps": 2, "warmup": 1},
                "assignment_memory": {"repeats": 2}}
    if device.type == "cuda":
        return {"solver_speed": {"sizes": (256, 512, 1024, 2048, 4096), "repeats": 5, "dim": 2048,
                                 "budget_s": 8.0},
                "step_speed": {"steps": 20, "warmup": 3, "block": 5, "on_device": True},
                "assignment_memory": {"repeats": 7}}
    return {"solver_speed": {"sizes": (64, 128, 256, 512, 1024, 2048, 4096), "repeats": 7,
                             "dim": 2048, "budget_s": 20.0},
            "step_speed": {"steps": 60, "warmup": 5},
            "assignment_memory": {"repeats": 7}}


# the short GPU session (about 150 s on an H200): b up to 1024, the four solvers that matter
SESSION_SOLVERS = ("hungarian", "auction", "greedy", "sinkhorn")
SESSION_ARGUMENTS = {
    "solver_speed": {"sizes": (256, 512, 1024), "repeats": 3, "dim": 2048, "budget_s": 2.0},
    "step_speed": {"steps": 8, "warmup": 2, "block": 5, "on_device": True},
    "profile_step": {"steps": 5, "warmup": 3},
}
# each configuration's solvers solve the same problem: the paper preset's integer costs
# (hungarian.lua's 0..100000) at the paper's configuration, the float cost at the default
SESSION_SOLVER_OVERRIDES = {
    "paper configuration": {
        "hungarian": ("solver.name=hungarian", "solver.quantize=100000"),
        "auction": ("solver.name=auction", "solver.quantize=100000")},
    "embedded default": {"hungarian": ("solver.name=hungarian",),
                         "auction": ("solver.name=auction",)},
}


def session_solvers() -> tuple[str, ...]:
    """The session's solvers that are registered (auction may not be yet)."""
    import natkit
    known = set(natkit.list_components("solver"))
    return tuple(name for name in SESSION_SOLVERS if name in known)


def session_cases(device: torch.device) -> list[tuple[str, tuple[str, ...]]]:
    """The session's step configurations: the paper's and the embedded default, amp +
    channels_last, each with hungarian and auction."""
    base = {"paper configuration": (f"device={device}", *PAPER_STEP_OVERRIDES, *CUDA_SWITCHES),
            "embedded default": (f"device={device}", *CUDA_SWITCHES)}
    known = session_solvers()
    return [(f"{label}, amp + channels_last, {name}", (*over, *solver))
            for label, over in base.items()
            for name, solver in SESSION_SOLVER_OVERRIDES[label].items() if name in known]


def run_session(device: str = "cuda") -> SpeedResult:
    """The short GPU session: small solver table, the paper's and the default's steps, profiles."""
    total = stopwatch()
    dev = builders.pick_device(device)
    args = SESSION_ARGUMENTS
    seconds: dict[str, float] = {}
    seconds["solvers"], solvers = timed(lambda: solver_speed(
        **args["solver_speed"], solvers=session_solvers(), device=str(dev)))
    cases = session_cases(dev)
    seconds["step"], steps = timed(lambda: [step_speed(over, **args["step_speed"], label=label)
                                            for label, over in cases])
    paper = [(label, over) for label, over in cases if label.startswith("paper")]
    seconds["profile"], profiles = timed(lambda: [profile_step(over, **args["profile_step"],
                                                               label=label)
                                                  for label, over in paper])
    seconds["total"] = total()
    return SpeedResult(machine(), False, _plain(args), tuple(solvers), tuple(steps), (), (),
                       None, seconds, tuple(profiles), session=True)


def _plain(value: Any) -> Any:
    """Tuples as lists, so the settings compare equal to what speed.json reads back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run_speed(quick: bool = False, device: str = "auto") -> SpeedResult:
    """Every measurement of the suite; ``quick`` uses tiny sizes (a CI smoke run)."""
    total = stopwatch()
    dev = builders.pick_device(device)
    args = _arguments(quick, dev)
    seconds: dict[str, float] = {}
    seconds["solvers"], solvers = timed(lambda: solver_speed(
        **args["solver_speed"], device=str(dev), extra=candidate_solvers()))
    seconds["step"], steps = timed(lambda: [step_speed(overrides, **args["step_speed"], label=label)
                                            for label, overrides in step_cases(dev, quick)])
    seconds["memory"], memory = timed(lambda: assignment_memory(**args["assignment_memory"]))
    switches: list[SwitchTiming] = []
    if dev.type == "cuda" and not quick:
        seconds["switches"], switches = timed(lambda: switch_speed(str(dev)))
    spread = None
    # fresh processes under torchrun (its own smoke test keeps it from rotting); one GPU per rank
    if not quick and (dev.type == "cpu" or torch.cuda.device_count() >= 2):
        seconds["distributed"], spread = timed(
            lambda: distributed_speed(overrides=(f"device={dev.type}",)))
    seconds["total"] = total()
    return SpeedResult(machine(), quick, _plain(args), tuple(solvers), tuple(steps), tuple(memory),
                       tuple(switches), spread, seconds)
