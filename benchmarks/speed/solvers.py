"""How long each assignment solver takes on NAT's cost matrices, and how far from the optimum."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import natkit
from benchmarks.timing import Sync, median, synchronizer, timed
from natkit import builders
from natkit.solvers import assignment_cost, is_permutation

REFERENCE = "hungarian"  # scipy's linear_sum_assignment: ratios are taken to it
MIN_REPEATS = 3  # a cell that cannot afford a warm-up and this many timed solves is skipped

Solve = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SolverTiming:
    """One (solver, b) cell: its median solve and gap, or why it was not timed.

    ``status`` is "ok" (timed), "skipped" (``estimate_s`` said it would not fit the
    budget) or "error" (``error`` says what went wrong).
    """

    solver: str
    b: int
    exact: bool
    dim: int
    device: str
    status: str
    seconds: float | None = None  # the median solve
    min_s: float | None = None
    repeats: int | None = None
    gap_pct: float | None = None
    ratio_to_hungarian: float | None = None
    estimate_s: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SolverTiming:
        """The cell as speed.json stored it."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def nat_cost(b: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """The cost a NAT batch hands the solver: -F C^T of unit-norm features and sphere targets."""
    gen = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(b, dim, generator=gen), dim=1)
    targets = natkit.create_targets("sphere", dim=dim, seed=seed)(torch.arange(b))
    targets = F.normalize(targets, dim=1)  # already unit rows; kept so any distribution fits
    # as AssignmentState.propose builds it: float32, on the features' device
    return -(features.to(device) @ targets.to(device, torch.float32).t())


def optimum(cost: torch.Tensor) -> float:
    """The optimal summed cost, from scipy on a float64 copy (independent of natkit's wrapper)."""
    _, cols = linear_sum_assignment(cost.detach().to("cpu", torch.float64).numpy())
    return assignment_cost(cost.detach().cpu(), torch.as_tensor(cols, dtype=torch.int64))


def optimality_gap(cost: torch.Tensor, perm: torch.Tensor, best: float) -> float:
    """How far ``perm`` is above the optimum ``best``, in percent of |best|."""
    return (assignment_cost(cost.detach().cpu(), perm.cpu()) - best) / abs(best) * 100.0


def estimate_seconds(history: list[tuple[int, float]], b: int, exact: bool) -> float | None:
    """One solve's expected seconds at ``b``, extrapolated from the sizes measured so far."""
    if not history:
        return None
    b0, t0 = history[-1]
    power = 3.0  # exact LAP solvers are O(b^3) in the worst case: a safe upper estimate
    if not exact:
        power = 2.0  # at least the b^2 cost matrix; steeper if the last two sizes say so
        if len(history) >= 2:
            b1, t1 = history[-2]
            if t1 > 0 and t0 > 0 and b0 != b1:
                power = min(3.0, max(2.0, math.log(t0 / t1) / math.log(b0 / b1)))
    return t0 * (b / b0) ** power


def time_solver(solver: Solve, cost: torch.Tensor, repeats: int, budget_s: float,
                sync: Sync) -> tuple[list[float], torch.Tensor]:
    """Up to ``repeats`` timed solves after one untimed warm-up, stopping at the budget."""
    # the warm-up absorbs one-off costs (lazy imports, first allocations) that training pays once
    spent, perm = timed(lambda: solver(cost), sync)
    times: list[float] = []
    while len(times) < repeats:
        seconds, perm = timed(lambda: solver(cost), sync)
        times.append(seconds)
        spent += seconds
        if spent + seconds > budget_s:
            break
    return times, perm


def _cell(name: str, solver: Solve, cost: torch.Tensor, best: float, history: list[tuple[int, float]],
          repeats: int, budget_s: float, sync: Sync, dim: int, device: str) -> SolverTiming:
    """One solver at one b: timed, or skipped when its extrapolated time exceeds the budget."""
    b = cost.shape[0]
    exact = bool(getattr(solver, "exact", False))
    cell = SolverTiming(name, b, exact, dim, device, "ok")
    guess = estimate_seconds(history, b, exact)
    # the reference is never skipped: scipy's optimum at this b costs as much anyway
    if name != REFERENCE and guess is not None and guess * (1 + MIN_REPEATS) > budget_s:
        return replace(cell, status="skipped", estimate_s=guess)
    try:
        times, perm = time_solver(solver, cost, repeats, budget_s, sync)
        if not is_permutation(perm.cpu(), b):
            raise RuntimeError("the result is not a permutation")
    except Exception as exc:  # one broken solver must not end the suite
        return replace(cell, status="error", error=f"{type(exc).__name__}: {exc}"[:300])
    seconds = median(times)
    history.append((b, seconds))
    return replace(cell, seconds=seconds, min_s=min(times), repeats=len(times),
                   gap_pct=optimality_gap(cost, perm, best))


def native_on(solver: Solve, device: torch.device) -> bool:
    """Whether ``solver`` is built to run on ``device`` (the auction only emulates the CPU)."""
    devices = getattr(solver, "native_devices", None)
    return devices is None or device.type in devices


def solver_speed(sizes: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096), repeats: int = 7,
                 dim: int = 2048, seed: int = 0, budget_s: float = 20.0, *,
                 solvers: Sequence[str] | None = None, device: str = "auto",
                 extra: Mapping[str, Solve] | None = None) -> list[SolverTiming]:
    """Median solve time and optimality gap of every registered solver (and ``extra``) at each b;
    without ``solvers``, those built for the device."""
    dev = builders.pick_device(device)
    sync = synchronizer(dev)
    names = list(solvers) if solvers is not None else natkit.list_components("solver")
    built = {name: natkit.create_solver(name) for name in names}
    if solvers is None:  # every registered solver, each where it is built to run
        built = {name: s for name, s in built.items() if native_on(s, dev)}
    built.update(extra or {})
    history: dict[str, list[tuple[int, float]]] = {name: [] for name in built}
    cells: list[SolverTiming] = []
    for b in sorted(sizes):
        cost = nat_cost(b, dim, seed, dev)
        best = optimum(cost)
        at_b = [_cell(name, solver, cost, best, history[name], repeats, budget_s, sync, dim,
                      str(dev)) for name, solver in built.items()]
        reference = next((c for c in at_b if c.solver == REFERENCE and c.status == "ok"), None)
        cells += [replace(c, ratio_to_hungarian=c.seconds / reference.seconds if reference else None)
                  if c.status == "ok" else c for c in at_b]
    return cells
