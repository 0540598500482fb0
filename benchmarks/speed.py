"""The speed suite: what the assignment solvers, the NAT step and the target bank cost.

Every ratio is measured side by side in one process, so the machine's speed
cancels out of it; absolute times are reported only next to :func:`machine`'s
description of the machine they ran on.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or assumed
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from rich.console import Console
from scipy.optimize import linear_sum_assignment

import natkit
from natkit import builders, engine
from natkit import config as cfg
from natkit.assignment import AssignmentState
from natkit.plugins import registry
from natkit.solvers import assignment_cost, is_permutation

REFERENCE = "hungarian"  # scipy's linear_sum_assignment: ratios are taken to it
MIN_REPEATS = 3  # a cell that cannot afford a warm-up and this many timed solves is skipped
IMAGENET_TRAIN = 1_281_167

# Small enough for CI: a 16 px AlexNet of width 4-8 on 64 shapes, batches of 16.
QUICK_STEP_OVERRIDES = (
    "data.num_train=64", "data.num_test=40", "data.image_size=16",
    "backbone.widths=[4,8,8,8,8]", "backbone.fc=[16]", "targets.dim=8", "train.batch_size=16",
)

Sync = Callable[[], None]


# ---------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads and version, CUDA device, python and platform."""
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may use, not the host's total
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": _memory_gb(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


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


def describe(info: dict[str, Any]) -> str:
    """The machine in one phrase, for the plain statement under the tables."""
    text = (f"{info['cpu']} ({info['cores']} cores usable, torch {info['torch']} on "
            f"{info['torch_threads']} threads")
    if info.get("memory_gb"):
        text += f", {info['memory_gb']:g} GB RAM"
    text += f"; {info['cuda']}" if info.get("cuda") else "; no CUDA device"
    return text + f"), python {info['python']}, {info['platform']}"


# ---------------------------------------------------------------- timing


def synchronizer(device: torch.device) -> Sync:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], Any], sync: Sync) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes, queued device work included, and its result."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


# ---------------------------------------------------------------- solvers


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


def time_solver(solver: Callable[[torch.Tensor], torch.Tensor], cost: torch.Tensor, repeats: int,
                budget_s: float, sync: Sync) -> tuple[list[float], torch.Tensor]:
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


def solver_speed(sizes: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096), repeats: int = 7,
                 dim: int = 2048, seed: int = 0, budget_s: float = 20.0, *,
                 solvers: Sequence[str] | None = None, device: str = "auto",
                 extra: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 ) -> list[dict[str, Any]]:
    """Median solve time and optimality gap of every registered solver (and ``extra``) at each b."""
    dev = builders.pick_device(device)
    sync = synchronizer(dev)
    names = list(solvers) if solvers is not None else natkit.list_components("solver")
    built = {name: natkit.create_solver(name) for name in names}
    built.update(extra or {})
    names = list(built)
    history: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    rows: list[dict[str, Any]] = []
    for b in sorted(sizes):
        cost = nat_cost(b, dim, seed, dev)
        best = optimum(cost)
        at_b: list[dict[str, Any]] = []
        for name in names:
            solver = built[name]
            exact = bool(getattr(solver, "exact", False))
            row: dict[str, Any] = {"solver": name, "b": b, "exact": exact, "dim": dim,
                                   "device": str(dev)}
            guess = estimate_seconds(history[name], b, exact)
            # the reference is never skipped: scipy's optimum at this b costs as much anyway
            if name != REFERENCE and guess is not None and guess * (1 + MIN_REPEATS) > budget_s:
                row.update(status="skipped", estimate_s=guess)
                at_b.append(row)
                continue
            try:
                times, perm = time_solver(solver, cost, repeats, budget_s, sync)
                if not is_permutation(perm.cpu(), b):
                    raise RuntimeError("the result is not a permutation")
            except Exception as exc:  # one broken solver must not end the suite
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
                at_b.append(row)
                continue
            seconds = statistics.median(times)
            history[name].append((b, seconds))
            row.update(status="ok", seconds=seconds, min_s=min(times), repeats=len(times),
                       gap_pct=optimality_gap(cost, perm, best))
            at_b.append(row)
        reference = next((r for r in at_b if r["solver"] == REFERENCE and r["status"] == "ok"), None)
        for row in at_b:
            if row["status"] == "ok":
                row["ratio_to_hungarian"] = (row["seconds"] / reference["seconds"]
                                             if reference else None)
        rows += at_b
    return rows


# ---------------------------------------------------------------- the training step


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


def _batches(run: engine.Run, count: int,
             on_device: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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


def step_speed(config_overrides: Sequence[str] = (), steps: int = 20,
               warmup: int = 3, *, on_device: bool = False, block: int = 1,
               label: str = "") -> dict[str, Any]:
    """Run.train_step of NAT (with and without reassignment) against supervised, interleaved.

    Each timing covers ``block`` consecutive steps of one case between two device
    synchronisations, so on a GPU the host queues a step while the previous one
    runs, as in training. The solver is timed in separate reassignment steps
    afterwards: timing it inside the main loop would add synchronisations.
    """
    overrides = list(config_overrides)
    configs = {mode: cfg.build(overrides=[*overrides, f"method={mode}"])
               for mode in ("nat", "supervised")}
    quiet = Console(stderr=True, quiet=True)
    with tempfile.TemporaryDirectory(prefix="natkit-speed-") as tmp:
        nat = engine.Run(configs["nat"], Path(tmp) / "nat", console=quiet)
        sup = engine.Run(configs["supervised"], Path(tmp) / "supervised", console=quiet)
        sync = synchronizer(nat.device)
        rounds = warmup + steps
        data = {"nat": _batches(nat, rounds * block, on_device),
                "supervised": _batches(sup, rounds * block, on_device)}

        def repeat(run: engine.Run, batches: list[Any],
                   reassign: bool | None) -> Callable[[int], Any]:
            def go(i: int) -> None:
                if reassign is not None:  # NAT: in a reassignment epoch, or not
                    run.method.reassigning = reassign
                for j in range(i * block, (i + 1) * block):
                    run.train_step(*batches[j % len(batches)])
            return go

        cases: dict[str, Callable[[int], Any]] = {
            "nat_reassign": repeat(nat, data["nat"], True),
            "nat_fixed": repeat(nat, data["nat"], False),
            "supervised": repeat(sup, data["supervised"], None),
        }
        names = list(cases)
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(rounds):
            # interleaved, and the order rotated, so load drift and cache effects hit every case
            for name in names[i % 3:] + names[: i % 3]:
                seconds, _ = timed(lambda name=name, i=i: cases[name](i), sync)
                if i >= warmup:
                    times[name].append(seconds / block)
        solver = TimedSolver(nat.method.solver, sync)
        nat.method.solver = solver
        nat.method.reassigning = True
        for i in range(steps):
            nat.train_step(*data["nat"][i % len(data["nat"])])
        solve_times = solver.seconds
        config = configs["nat"]
        solver_name = config.solver["name"]
        device = str(nat.device)
    median = {name: statistics.median(values) for name, values in times.items()}
    spread = {name: _iqr(values) for name, values in times.items()}
    k = config.method["permute_every"]
    # one reassignment epoch in every k (none at all when k is 0)
    period = (median["nat_fixed"] if k == 0
              else (median["nat_reassign"] + (k - 1) * median["nat_fixed"]) / k)
    solve = statistics.median(solve_times) if solve_times else 0.0
    b = config.train.batch_size
    return {
        "label": label, "overrides": overrides, "on_device": on_device,
        "device": device, "batch_size": b, "dataset": config.data["name"],
        "image_size": config.data.get("image_size"), "backbone": config.backbone,
        "solver": solver_name, "targets": config.targets, "permute_every": k,
        "steps": steps, "warmup": warmup, "block": block,
        "median_s": median, "iqr_s": spread, "period_s": period,
        "images_per_s": {name: b / seconds for name, seconds in median.items()},
        "ratios": {
            "nat_reassign": median["nat_reassign"] / median["supervised"],
            "nat_fixed": median["nat_fixed"] / median["supervised"],
            "period": period / median["supervised"],
        },
        "solver_s": solve,
        "solver_share": solve / median["nat_reassign"],
        "solver_share_period": (solve / k) / period if k else 0.0,
        "reassign_overhead_s": median["nat_reassign"] - median["nat_fixed"],
    }


def _iqr(values: list[float]) -> float:
    """Interquartile range: how much the steps of one case vary, to judge small differences."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q3 - q1


# ---------------------------------------------------------------- memory


def _targets_at(name: str, dim: int, k: int) -> Any:
    """The distribution ``name`` at ``dim``, with k components where it takes a ``k``."""
    options: dict[str, Any] = {"dim": dim, "seed": 0}
    if "k" in registry("targets").parameters(name):
        options["k"] = k
        try:
            return natkit.create_targets(name, **options)
        except ValueError:  # basis targets need k <= dim
            options["k"] = min(k, dim)
    return natkit.create_targets(name, **options)


def assignment_memory(n: int = IMAGENET_TRAIN, dims: Sequence[int] = (128, 2048), k: int = 1000,
                      batch: int = 256, repeats: int = 5, device: str = "cpu") -> list[dict[str, Any]]:
    """Bytes of P and of a cached bank at n images, and the measured cost of regenerating targets."""
    dev = builders.pick_device(device)
    sync = synchronizer(dev)
    default_limit_mb = cfg.build().method["cache_targets_mb"]
    rows = []
    for name in natkit.list_components("targets"):
        for dim in dims:
            targets = _targets_at(name, dim, k)
            # a cache limit of 0 MB: targets regenerated from (seed, id), as natkit does at scale
            state = AssignmentState(targets, n, generator=torch.Generator().manual_seed(0),
                                    device=dev, cache_limit_mb=0.0)
            perm = state.perm
            ids = torch.randint(n, (batch,), generator=torch.Generator().manual_seed(1))
            _, held = timed(lambda ids=ids, state=state: state.targets_of(ids), sync)  # warm-up
            regen = [timed(lambda ids=ids, state=state: state.targets_of(ids), sync)[0]
                     for _ in range(repeats)]
            bank = held.element_size() * n * dim
            perm_bytes = perm.element_size() * perm.nelement()
            rows.append({
                "targets": name, "options": targets.options(), "n": n, "dim": dim,
                "device": str(dev), "perm_dtype": str(perm.dtype).removeprefix("torch."),
                "target_dtype": str(held.dtype).removeprefix("torch."),
                "perm_bytes": perm_bytes,
                "perm_bytes_measured": perm.untyped_storage().nbytes(),
                "bank_bytes": bank,
                "cached_bytes": perm_bytes + bank,
                "regenerated_bytes": perm_bytes + held.element_size() * held.nelement(),
                "regenerating": not state.cached,
                "cached_under_default_limit": AssignmentState.fits_cache(n, dim, default_limit_mb),
                "default_limit_mb": default_limit_mb,
                "regen_batch": batch, "regen_s": statistics.median(regen),
                "regen_epoch_s": statistics.median(regen) * math.ceil(n / batch),
            })
            del state, perm, held
    return rows


# ---------------------------------------------------------------- the whole suite


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


SWITCHES = (
    ("float32", ()),
    ("amp (bfloat16 autocast)", ("train.amp=true",)),
    ("amp + channels_last", ("train.amp=true", "train.channels_last=true")),
    ("amp + channels_last + compile", ("train.amp=true", "train.channels_last=true",
                                       "train.compile=true")),
)


def switch_speed(device: str, overrides: Sequence[str] = PAPER_STEP_OVERRIDES, steps: int = 10,
                 warmup: int = 3, block: int = 5) -> list[dict[str, Any]]:
    """NAT steps without reassignment under each speed switch, batches already on the device."""
    quiet = Console(stderr=True, quiet=True)
    rows = []
    for label, switches in SWITCHES:
        config = cfg.build(overrides=[f"device={device}", *overrides, *switches])
        with tempfile.TemporaryDirectory(prefix="natkit-switch-") as tmp:
            run = engine.Run(config, Path(tmp) / "run", console=quiet)
            sync = synchronizer(run.device)
            batches = _batches(run, block, on_device=True)
            times = []

            def block_of_steps(run: engine.Run = run, batches: list[Any] = batches) -> None:
                for batch in batches:
                    run.train_step(*batch)

            for i in range(warmup + steps):  # the warm-up absorbs cudnn's search and compilation
                seconds, _ = timed(block_of_steps, sync)
                if i >= warmup:
                    times.append(seconds / block)
        median = statistics.median(times)
        rows.append({"switches": label, "overrides": list(switches), "median_s": median,
                     "iqr_s": _iqr(times), "images_per_s": config.train.batch_size / median})
    for row in rows:
        row["speedup"] = rows[0]["median_s"] / row["median_s"]
    return rows


def run_speed(quick: bool = False, device: str = "auto") -> dict[str, Any]:
    """Every measurement of the suite; ``quick`` uses tiny sizes (a CI smoke run)."""
    from benchmarks.candidates import candidate_solvers

    started = time.perf_counter()
    dev = builders.pick_device(device)
    seconds: dict[str, float] = {}
    if quick:
        solver_args: dict[str, Any] = {"sizes": (16, 32, 64), "repeats": 3, "dim": 64,
                                       "budget_s": 2.0}
        step_args: dict[str, Any] = {"steps": 2, "warmup": 1}
        memory_args: dict[str, Any] = {"repeats": 2}
    elif dev.type == "cuda":
        solver_args = {"sizes": (256, 512, 1024, 2048, 4096), "repeats": 5, "dim": 2048,
                       "budget_s": 8.0}
        step_args = {"steps": 20, "warmup": 3, "block": 5, "on_device": True}
        memory_args = {"repeats": 7}
    else:
        solver_args = {"sizes": (64, 128, 256, 512, 1024, 2048, 4096), "repeats": 7, "dim": 2048,
                       "budget_s": 20.0}
        step_args = {"steps": 60, "warmup": 5}
        memory_args = {"repeats": 7}
    t0 = time.perf_counter()
    solvers = solver_speed(**solver_args, device=str(dev), extra=candidate_solvers())
    seconds["solvers"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    steps = [step_speed(overrides, **step_args, label=label)
             for label, overrides in step_cases(dev, quick)]
    seconds["step"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    memory = assignment_memory(**memory_args)
    seconds["memory"] = time.perf_counter() - t0
    switches = []
    if dev.type == "cuda" and not quick:
        t0 = time.perf_counter()
        switches = switch_speed(str(dev))
        seconds["switches"] = time.perf_counter() - t0
    spread = None
    # fresh processes under torchrun (its own smoke test keeps it from rotting); one GPU per rank
    if not quick and (dev.type == "cpu" or torch.cuda.device_count() >= 2):
        from benchmarks.distributed import distributed_speed

        t0 = time.perf_counter()
        spread = distributed_speed(overrides=(f"device={dev.type}",))
        seconds["distributed"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    settings = {"solver_speed": solver_args, "step_speed": step_args, "assignment_memory": memory_args}
    return {"machine": machine(), "quick": quick, "settings": _plain(settings),
            "solvers": solvers, "step": steps[0], "steps": steps, "memory": memory,
            "switches": switches, "distributed": spread, "seconds": seconds}


def _plain(value: Any) -> Any:
    """Tuples as lists, so the results are plain JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- markdown


def _ms(seconds: float) -> str:
    """Milliseconds with about three significant digits."""
    ms = seconds * 1e3
    if abs(ms) >= 100:
        return f"{ms:,.0f}"
    if abs(ms) >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}" if abs(ms) >= 0.1 else f"{ms:.3f}"


def _bytes(n: float) -> str:
    """Decimal units, as DESIGN.md quotes them (10.5 GB)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n / size < 100 else f"{n / size:,.0f} {unit}"
    return f"{n:.0f} B"


def _ratio(value: float | None) -> str:
    """A time ratio such as 0.44× or 2,634×."""
    if value is None:
        return "-"
    return f"{value:.2g}×" if value < 10 else f"{value:,.0f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _solver_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The time and gap tables, one column per solver and one row per b."""
    names = list(dict.fromkeys(r["solver"] for r in rows))
    sizes = sorted({r["b"] for r in rows})
    cell = {(r["solver"], r["b"]): r for r in rows}
    kind = {n: "exact" if any(r["exact"] for r in rows if r["solver"] == n) else "approx."
            for n in names}
    header = ["b", *(f"{n} ({kind[n]})" for n in names)]

    def time_cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        if r["status"] == "skipped":
            return f"skipped (est. {r['estimate_s']:.3g} s a solve)"
        if r["status"] == "error":
            return "error"
        return f"{_ms(r['seconds'])} ({_ratio(r.get('ratio_to_hungarian'))})"

    def gap_cell(r: dict[str, Any] | None) -> str:
        if r is None or r["status"] != "ok":
            return "-"
        return "0" if abs(r["gap_pct"]) < 1e-9 else f"{r['gap_pct']:.3g}"

    lines = ["Solve time in ms, median over repeats (in brackets: the ratio to scipy's hungarian "
             "at the same b):", ""]
    lines += _table(header, [[str(b), *(time_cell(cell.get((n, b))) for n in names)] for b in sizes])
    lines += ["", "Optimality gap, % above scipy's optimum on the same cost matrix:", ""]
    lines += _table(header, [[str(b), *(gap_cell(cell.get((n, b))) for n in names)] for b in sizes])
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {r['solver']} at b = {r['b']}: {r['error']}" for r in errors]
    return lines


def _step_lines(step: dict[str, Any]) -> list[str]:
    """The step table and the solver's share of the step."""
    k = step["permute_every"]
    med, ips, ratios = step["median_s"], step["images_per_s"], step["ratios"]
    iqr = step.get("iqr_s", {})

    def row(label: str, case: str) -> list[str]:
        spread = _ms(iqr[case]) if case in iqr else "-"
        return [label, _ms(med[case]), spread, f"{ips[case]:,.0f}", f"{ratios.get(case, 1.0):.3f}"]

    rows = [row("supervised", "supervised"), row("NAT, reassignment epoch", "nat_reassign"),
            row("NAT, other epochs", "nat_fixed"),
            [f"NAT, averaged over a {k}-epoch period", _ms(step["period_s"]), "-",
             f"{step['batch_size'] / step['period_s']:,.0f}", f"{ratios['period']:.3f}"]]
    overhead = step["reassign_overhead_s"]
    noise = max(iqr.get("nat_reassign", 0.0), iqr.get("nat_fixed", 0.0))
    return [
        *_table(["step", "median ms", "IQR ms", "images/s", "ratio to supervised"], rows), "",
        f"The solver ({step['solver']}) takes {_ms(step['solver_s'])} ms per reassignment step: "
        f"{step['solver_share']:.1%} of that step, {step['solver_share_period']:.1%} of the time "
        f"averaged over a permutation period. The median step with reassignment minus the median "
        f"step without: {_ms(overhead)} ms"
        + (" (smaller than the steps' spread, so the solver's own timing is the better measure)."
           if abs(overhead) < noise else "."),
    ]


def _memory_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The memory table: P, a cached bank, and regenerating instead."""
    body = []
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items() if k not in ("dim", "seed"))
        body.append([
            r["targets"] + (f" ({options})" if options else ""), str(r["dim"]),
            _bytes(r["perm_bytes_measured"]), _bytes(r["cached_bytes"]),
            _bytes(r["regenerated_bytes"]), f"{_ms(r['regen_s'])} ms",
            f"{r['regen_epoch_s']:.3g} s",
            "yes" if r["cached_under_default_limit"] else "no",
        ])
    n = rows[0]["n"] if rows else IMAGENET_TRAIN
    limit = rows[0]["default_limit_mb"] if rows else cfg.build().method["cache_targets_mb"]
    batch = rows[0]["regen_batch"] if rows else 256
    header = ["targets", "dim", "P (measured)", "cached: P + bank", f"regenerated: P + {batch} targets",
              f"regenerate {batch}", f"per epoch (n / {batch} batches)",
              f"cached by default (<= {limit:g} MB)"]
    return [f"n = {n:,} images; P is {rows[0]['perm_dtype'] if rows else 'int64'}, targets float32.",
            "", *_table(header, body), "",
            "'P (measured)' is the storage of AssignmentState.perm built at this n with a cache "
            "limit of 0 MB; 'per epoch' is one regeneration per batch (a reassignment epoch "
            "regenerates twice: once for the solve, once for the loss)."]


def speed_markdown(results: dict[str, Any]) -> str:
    """The suite as markdown: solver, step and memory tables, and what was measured where."""
    lines = ["### Speed: the assignment solvers and the cost of NAT", ""]
    solvers = results.get("solvers") or []
    if solvers:
        first = solvers[0]
        lines += ["#### Assignment solvers", "",
                  f"NAT cost -F C^T (unit-norm Gaussian features, sphere targets, d = {first['dim']}, "
                  f"float32 on {first['device']}).", "", *_solver_lines(solvers), ""]
    steps = results.get("steps") or ([results["step"]] if results.get("step") else [])
    if steps:
        lines += ["#### Training step: NAT against supervised", ""]
    for step in steps:
        bb = step["backbone"]
        where = ("batches already on the device" if step.get("on_device")
                 else "batches loaded beforehand")
        lines += [f"**{step.get('label') or 'step'}**: Run.train_step at batch {step['batch_size']}, "
                  f"{bb['name']} (widths {bb.get('widths')}) on {step['dataset']} at "
                  f"{step['image_size']} px, solver {step['solver']}, on {step['device']} ({where}); "
                  f"median over {step['steps']} interleaved rounds of {step.get('block', 1)} "
                  f"step(s) per case after {step['warmup']} warm-up rounds.", "",
                  *_step_lines(step), ""]
    memory = results.get("memory")
    if memory:
        lines += ["#### Assignment memory at ImageNet scale", "", *_memory_lines(memory), ""]
    switches = results.get("switches")
    if switches:
        body = [[r["switches"], _ms(r["median_s"]), _ms(r["iqr_s"]), f"{r['images_per_s']:,.0f}",
                 f"{r['speedup']:.2f}×"] for r in switches]
        lines += ["#### Speed switches on the paper configuration", "",
                  "A NAT step without reassignment (AlexNet at 224 px, batch 256, d = 2048), batches "
                  "already on the device; median per step over blocks of 5 steps. Each switch is "
                  "a train.* option (amp, channels_last, compile).", "",
                  *_table(["switches", "median ms", "IQR ms", "images/s", "speed-up"], body), ""]
    if results.get("distributed"):
        from benchmarks.distributed import distributed_markdown

        lines += [distributed_markdown(results["distributed"])]
    lines += ["#### What was measured", "", _statement(results), ""]
    return "\n".join(lines)


def _statement(results: dict[str, Any]) -> str:
    """One plain paragraph: what was timed, how, and on which machine."""
    settings = results.get("settings", {})
    s = settings.get("solver_speed", {})
    seconds = results.get("seconds", {})
    text = (f"Measured on {describe(results['machine'])}"
            f"{' in quick (smoke) mode, with tiny sizes' if results.get('quick') else ''}. "
            f"Solver times are medians of up to {s.get('repeats', '?')} solves after one warm-up "
            f"call, timed with time.perf_counter around the solver call (the device-to-host copy "
            f"included); a (solver, b) cell whose extrapolated time would exceed "
            f"{s.get('budget_s', '?')} s is skipped. Gaps are measured against scipy's optimum "
            f"on the same matrix. Step times are medians of Run.train_step on real batches, the "
            f"three cases interleaved round by round, each timing a block of consecutive steps "
            f"between two device synchronisations; the solver's share is its own call, timed in "
            f"separate reassignment steps so that its timing adds no synchronisation to the "
            f"steps above. Ratios come from one process and carry over to other machines "
            f"far better than the absolute times, which describe this machine only.")
    if seconds.get("total"):
        text += f" The suite took {seconds['total']:.0f} s."
    return text


# ---------------------------------------------------------------- the figure


def plot_solver_speed(results: dict[str, Any], path: str | Path) -> None:
    """Solve time against b on log-log axes, and the optimality gap beside it, as a PNG."""
    rows = [r for r in results.get("solvers", []) if r["status"] == "ok"]
    fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = sorted((r for r in rows if r["solver"] == name), key=lambda r: r["b"])
        style = "o-" if mine[0]["exact"] else "s--"
        sizes = [r["b"] for r in mine]
        ax_t.plot(sizes, [r["seconds"] * 1e3 for r in mine], style, label=name)
        ax_g.plot(sizes, [max(r["gap_pct"], 0.0) for r in mine], style, label=name)
    ax_t.set_xscale("log", base=2)
    ax_t.set_yscale("log")
    ax_t.set_xlabel("batch size b")
    ax_t.set_ylabel("solve time (ms, median)")
    ax_t.set_title("solve time")
    ax_t.grid(True, which="both", alpha=0.3)
    ax_g.set_xscale("log", base=2)
    ax_g.set_xlabel("batch size b")
    ax_g.set_ylabel("% above scipy's optimum")
    ax_g.set_title("optimality gap (exact solvers: 0)")
    ax_g.grid(True, alpha=0.3)
    for ax in (ax_t, ax_g):
        if rows:
            ax.legend(fontsize=8)
    fig.suptitle(f"NAT assignment solvers on {results['machine']['cpu']}"
                 + (f" + {results['machine']['cuda']}" if results["machine"].get("cuda") else ""),
                 fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="natkit's speed suite: solvers, step, memory.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, under a minute (smoke)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for speed.md, speed.json and speed.png")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu or cuda[:N]; on CUDA the paper configuration's step is timed too")
    args = parser.parse_args()
    results = run_speed(quick=args.quick, device=args.device)
    text = speed_markdown(results)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.md").write_text(text)
        (args.out / "speed.json").write_text(json.dumps(results, indent=1, default=str))
        plot_solver_speed(results, args.out / "speed.png")
    print(text)
    print(f"speed suite: {results['seconds']['total']:.0f} s", file=sys.stderr)
