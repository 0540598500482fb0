"""What a NAT training step costs against a supervised one, and what the speed switches buy.

Both time ``Run.train_step`` on real batches of the run's first epoch. NAT is timed
through its public switches: :meth:`~natkit.methods.nat.NoiseAsTargets.force_reassignment`
for a step with and without reassignment, and
:meth:`~natkit.methods.nat.NoiseAsTargets.wrap_solver` for the solver's own time.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from benchmarks.timing import Sync, TimedSolver, iqr, median, synchronizer, timed
from natkit import config as cfg
from natkit.engine import Run

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
CASES = ("nat_reassign", "nat_fixed", "supervised")

# Small enough for CI: a 16 px AlexNet of width 4-8 on 64 shapes, batches of 16.
QUICK_STEP_OVERRIDES = (
    "data.num_train=64", "data.num_test=40", "data.image_size=16",
    "backbone.widths=[4,8,8,8,8]", "backbone.fc=[16]", "targets.dim=8", "train.batch_size=16",
)
# The paper's configuration (full AlexNet at 224 px, fc6-fc7 head, batch 256, d = 2048) on enough
# generated images for a few distinct batches.
PAPER_STEP_OVERRIDES = (
    "data.image_size=224", "data.num_train=1024", "data.num_test=16",
    "backbone.widths=[96,256,384,384,256]", "backbone.fc=[4096,4096]", "head.hidden=null",
    "targets.dim=2048", "train.batch_size=256",
)
# What a CUDA run should switch on (measured by the switches table of the GPU suite).
CUDA_SWITCHES = ("train.amp=true", "train.channels_last=true")
GPU_STEP_SOLVERS = ("hungarian", "greedy", "sinkhorn")
SWITCHES = (
    ("float32", ()),
    ("amp (bfloat16 autocast)", ("train.amp=true",)),
    ("amp + channels_last", ("train.amp=true", "train.channels_last=true")),
    ("amp + channels_last + compile", ("train.amp=true", "train.channels_last=true",
                                       "train.compile=true")),
)


@dataclass(frozen=True)
class StepTiming:
    """One configuration's step: NAT with and without reassignment against supervised.

    The per-case dicts are keyed by :data:`CASES`; ``ratios`` are to the supervised
    step, with "period" the NAT step averaged over a permutation period.
    """

    label: str
    overrides: tuple[str, ...]
    on_device: bool  # batches moved to the device before timing
    device: str
    batch_size: int
    dataset: str
    image_size: int | None
    backbone: dict[str, Any]
    solver: str
    targets: dict[str, Any]
    permute_every: int
    steps: int
    warmup: int
    block: int  # consecutive steps between two device synchronisations
    median_s: dict[str, float]
    iqr_s: dict[str, float]
    period_s: float
    images_per_s: dict[str, float]
    ratios: dict[str, float]
    solver_s: float
    solver_share: float
    solver_share_period: float
    reassign_overhead_s: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepTiming:
        """The step as speed.json stored it (older files lack the label, block and spread)."""
        data = {"label": "", "on_device": False, "block": 1, "iqr_s": {}, **data}
        return cls(**{**data, "overrides": tuple(data["overrides"])})


@dataclass(frozen=True)
class SwitchTiming:
    """A NAT step without reassignment under one set of speed switches."""

    switches: str
    overrides: tuple[str, ...]
    median_s: float
    iqr_s: float
    images_per_s: float
    speedup: float = 1.0  # against the first row's (float32) step

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwitchTiming:
        """The row as speed.json stored it."""
        return cls(**{**data, "overrides": tuple(data["overrides"])})


def first_batches(run: Run, count: int, on_device: bool = False) -> list[Batch]:
    """The first ``count`` batches of the run's first epoch, loaded (cycled if too few).

    With ``on_device`` they are moved to the run's device ahead of timing, so the
    step is timed without the loader and the host-to-device copy.
    """
    order = run.epoch_batches(0)  # the run's own batch indices, as training draws them
    rows = [order[i % len(order)] for i in range(min(count, len(order)))]
    batches = [(run.dataset.get_batch(idx), idx, run.dataset.labels[idx]) for idx in rows]
    if on_device:
        batches = [tuple(t.to(run.device) for t in batch) for batch in batches]
    return batches


def _case(run: Run, batches: list[Batch], block: int,
           reassign: bool | None) -> Callable[[int], None]:
    """Round i's block of steps of one case; ``reassign`` forces NAT's choice (None: not NAT)."""
    def go(i: int) -> None:
        if reassign is not None:
            run.method.force_reassignment(reassign)
        for j in range(i * block, (i + 1) * block):
            run.train_step(*batches[j % len(batches)])
    return go


def _interleaved(cases: dict[str, Callable[[int], None]], rounds: int, warmup: int, block: int,
                 sync: Sync) -> dict[str, list[float]]:
    """Seconds per step of each case, the cases interleaved round by round after ``warmup``."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        # the order rotated, so load drift and cache effects hit every case
        for name in names[i % 3:] + names[: i % 3]:
            seconds, _ = timed(lambda name=name, i=i: cases[name](i), sync)
            if i >= warmup:
                times[name].append(seconds / block)
    return times


def _solve_seconds(nat: Run, batches: list[Batch], steps: int, sync: Sync) -> list[float]:
    """The solver's own time in ``steps`` reassignment steps (apart, so the steps above carry
    no synchronisation of its timing)."""
    solver = nat.method.wrap_solver(lambda solve: TimedSolver(solve, sync))
    nat.method.force_reassignment(True)
    for i in range(steps):
        nat.train_step(*batches[i % len(batches)])
    return solver.seconds


def step_speed(config_overrides: Sequence[str] = (), steps: int = 20,
               warmup: int = 3, *, on_device: bool = False, block: int = 1,
               label: str = "") -> StepTiming:
    """Run.train_step of NAT (with and without reassignment) against supervised, interleaved.

    Each timing covers ``block`` consecutive steps of one case between two device
    synchronisations, so on a GPU the host queues a step while the previous one
    runs, as in training. The solver is timed in separate reassignment steps
    afterwards: timing it inside the main loop would add synchronisations.
    """
    overrides = tuple(config_overrides)
    configs = {mode: cfg.build(overrides=[*overrides, f"method={mode}"])
               for mode in ("nat", "supervised")}
    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory(prefix="natkit-speed-") as tmp:
        nat = Run(configs["nat"], Path(tmp) / "nat", console=quiet)
        sup = Run(configs["supervised"], Path(tmp) / "supervised", console=quiet)
        sync = synchronizer(nat.device)
        rounds = warmup + steps
        data = {"nat": first_batches(nat, rounds * block, on_device),
                "supervised": first_batches(sup, rounds * block, on_device)}
        cases = {"nat_reassign": _case(nat, data["nat"], block, True),
                 "nat_fixed": _case(nat, data["nat"], block, False),
                 "supervised": _case(sup, data["supervised"], block, None)}
        times = _interleaved(cases, rounds, warmup, block, sync)
        solve_times = _solve_seconds(nat, data["nat"], steps, sync)
        device = str(nat.device)
    config = configs["nat"]
    med = {name: median(values) for name, values in times.items()}
    k = config.method["permute_every"]
    # one reassignment epoch in every k (none at all when k is 0)
    period = (med["nat_fixed"] if k == 0
              else (med["nat_reassign"] + (k - 1) * med["nat_fixed"]) / k)
    solve = median(solve_times) if solve_times else 0.0
    b = config.train.batch_size
    return StepTiming(
        label=label, overrides=overrides, on_device=on_device, device=device, batch_size=b,
        dataset=config.data["name"], image_size=config.data.get("image_size"),
        backbone=config.backbone, solver=config.solver["name"], targets=config.targets,
        permute_every=k, steps=steps, warmup=warmup, block=block, median_s=med,
        iqr_s={name: iqr(values) for name, values in times.items()}, period_s=period,
        images_per_s={name: b / seconds for name, seconds in med.items()},
        ratios={"nat_reassign": med["nat_reassign"] / med["supervised"],
                "nat_fixed": med["nat_fixed"] / med["supervised"],
                "period": period / med["supervised"]},
        solver_s=solve, solver_share=solve / med["nat_reassign"],
        solver_share_period=(solve / k) / period if k else 0.0,
        reassign_overhead_s=med["nat_reassign"] - med["nat_fixed"])


def step_cases(device: torch.device, quick: bool) -> list[tuple[str, tuple[str, ...]]]:
    """The configurations whose step is timed: the default, and on CUDA the paper's per solver."""
    if quick:
        return [("embedded default (tiny)", QUICK_STEP_OVERRIDES)]
    cases = [("embedded default", (f"device={device}",))]
    if device.type == "cuda":
        cases.append(("embedded default, amp + channels_last", (f"device={device}", *CUDA_SWITCHES)))
        cases += [(f"paper configuration, amp + channels_last, {name}",
                   (f"device={device}", *PAPER_STEP_OVERRIDES, *CUDA_SWITCHES, f"solver.name={name}"))
                  for name in GPU_STEP_SOLVERS]
    return cases


def switch_speed(device: str, overrides: Sequence[str] = PAPER_STEP_OVERRIDES, steps: int = 10,
                 warmup: int = 3, block: int = 5) -> list[SwitchTiming]:
    """NAT steps without reassignment under each speed switch, batches already on the device."""
    quiet = Console(stderr=True, quiet=True)
    rows = []
    for label, switches in SWITCHES:
        config = cfg.build(overrides=[f"device={device}", *overrides, *switches])
        with tempfile.TemporaryDirectory(prefix="natkit-switch-") as tmp:
            run = Run(config, Path(tmp) / "run", console=quiet)
            sync = synchronizer(run.device)
            batches = first_batches(run, block, on_device=True)
            times = []

            def block_of_steps(run: Run = run, batches: list[Batch] = batches) -> None:
                for batch in batches:
                    run.train_step(*batch)

            for i in range(warmup + steps):  # the warm-up absorbs cudnn's search and compilation
                seconds, _ = timed(block_of_steps, sync)
                if i >= warmup:
                    times.append(seconds / block)
        rows.append(SwitchTiming(label, tuple(switches), median(times), iqr(times),
                                 config.train.batch_size / median(times)))
    return [replace(row, speedup=rows[0].median_s / row.median_s) for row in rows]
