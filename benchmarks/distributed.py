"""The distributed row of the speed suite: N torchrun ranks against one process, same global batch.

``python -m benchmarks.distributed`` times training steps of the default run
(global batch 256) in one process and under ``torchrun --nproc_per_node=2``
(gloo on the CPU, NCCL on CUDA), both launched the same way, and how much of a
reassignment step the all-gather of the batch's features and rank 0's solve
take. Each setting runs in a fresh process; on the CPU the one process gets
every core and each rank an equal share of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.timing import TimedSolver, median, stopwatch, synchronizer, timed

OUT_ENV = "NATKIT_BENCH_OUT"
MODES = ("reassign", "fixed")


@dataclass(frozen=True)
class RanksTiming:
    """One setting: its step times (per mode in :data:`MODES`) and, of a reassignment step,
    the shares of the all-gather and of the solve."""

    ranks: int
    device: str
    threads: int
    batch_size: int
    median_s: dict[str, float]
    gather_share: float
    solve_share: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RanksTiming:
        """The setting as a worker or distributed.json wrote it."""
        return cls(**data)


@dataclass(frozen=True)
class DistributedResult:
    """One process against ``settings[1].ranks`` ranks; ``ratios`` are the ranks' step time
    over the one process's, per mode."""

    overrides: tuple[str, ...]
    steps: int
    warmup: int
    cores: int
    settings: tuple[RanksTiming, RanksTiming]
    ratios: dict[str, float]
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistributedResult:
        """The result as distributed.json (or speed.json's distributed row) stored it."""
        return cls(**{**data, "overrides": tuple(data["overrides"]),
                      "settings": tuple(RanksTiming.from_dict(s) for s in data["settings"])})


def _worker(overrides: Sequence[str], steps: int, warmup: int) -> None:
    """Time ``steps`` reassignment and fixed steps in this process (one rank of the run)."""
    import torch
    from rich.console import Console

    from natkit import config as cfg
    from natkit import distributed
    from natkit.engine import Run

    comm = distributed.from_environment("cpu" if "device=cpu" in overrides else "auto")
    config = cfg.build(overrides=[*overrides, f"world_size={comm.world_size}"])
    spent = {"gather": 0.0}

    @dataclass(frozen=True)
    class TimedComm(distributed.Comm):
        def all_gather(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
            seconds, out = timed(lambda: super(TimedComm, self).all_gather(tensor, what))
            spent["gather"] += seconds
            return out

    timed_comm = TimedComm(**{f.name: getattr(comm, f.name) for f in fields(comm)})
    with tempfile.TemporaryDirectory(prefix="natkit-dist-") as tmp:
        run = Run(config, Path(tmp), console=Console(stderr=True, quiet=True), comm=timed_comm)
        sync = synchronizer(run.device)
        solver = run.method.wrap_solver(lambda solve: TimedSolver(solve, sync))
        share = config.train.batch_size // comm.world_size
        rows = run.epoch_batches(0)[:, comm.rank * share:(comm.rank + 1) * share]
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        shares: list[dict[str, float]] = []
        for i in range(warmup + steps):
            for mode in MODES:
                idx = rows[i % len(rows)]
                batch = (run.dataset.get_batch(idx), idx, run.dataset.labels[idx])
                run.method.force_reassignment(mode == "reassign")
                spent["gather"] = 0.0
                solves = len(solver.seconds)
                comm.barrier("starting a timed step")
                seconds, _ = timed(lambda batch=batch: float(run.train_step(*batch)[0]), sync)
                if i >= warmup:
                    times[mode].append(seconds)
                    if mode == "reassign":
                        shares.append({"gather": spent["gather"] / seconds,
                                       "solve": sum(solver.seconds[solves:]) / seconds})
    if comm.is_main:
        result = RanksTiming(
            ranks=comm.world_size, device=str(run.device), threads=torch.get_num_threads(),
            batch_size=config.train.batch_size,
            median_s={mode: median(v) for mode, v in times.items()},
            gather_share=median([s["gather"] for s in shares]),
            solve_share=median([s["solve"] for s in shares]))
        Path(os.environ[OUT_ENV]).write_text(json.dumps(asdict(result)))
    distributed.shutdown(comm)


def _launch(ranks: int, overrides: Sequence[str], steps: int, warmup: int,
            threads: int) -> RanksTiming:
    """One setting in fresh processes: ``ranks`` = 1 is a plain process, more go through torchrun."""
    with tempfile.TemporaryDirectory(prefix="natkit-dist-out-") as tmp:
        out = Path(tmp) / "result.json"
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env.update({OUT_ENV: str(out), "OMP_NUM_THREADS": str(threads),
                    "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
        args = ["--worker", "--steps", str(steps), "--warmup", str(warmup),
                *[a for o in overrides for a in ("--set", o)]]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={ranks}"] if ranks > 1 else [sys.executable])
        command = [*launcher, "-m", "benchmarks.distributed", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return RanksTiming.from_dict(json.loads(out.read_text()))


def distributed_speed(ranks: int = 2, overrides: Sequence[str] = ("device=cpu",),
                      steps: int = 20, warmup: int = 3) -> DistributedResult:
    """Step times of one process and of ``ranks`` torchrun ranks at the same global batch."""
    cores = os.cpu_count() or 1
    elapsed = stopwatch()
    one = _launch(1, overrides, steps, warmup, threads=cores)
    many = _launch(ranks, overrides, steps, warmup, threads=max(1, cores // ranks))
    return DistributedResult(
        overrides=tuple(overrides), steps=steps, warmup=warmup, cores=cores, settings=(one, many),
        ratios={mode: many.median_s[mode] / one.median_s[mode] for mode in MODES},
        seconds=elapsed())


def distributed_markdown(result: DistributedResult) -> str:
    """The distributed row as a markdown section."""
    lines = ["#### Distributed: torchrun ranks against one process", "",
             f"Training steps of the default run (global batch "
             f"{result.settings[0].batch_size}) on {result.cores} cores; "
             f"{result.steps} timed steps of each kind after {result.warmup} warm-up ones, "
             "medians. A reassignment step includes the all-gather of the batch's features and "
             "rank 0's solve; their shares are of that step's time.", "",
             "| processes | threads each | device | reassignment step ms | fixed step ms | "
             "all-gather share | solve share |",
             "|---|---|---|---|---|---|---|"]
    for s in result.settings:
        lines.append(f"| {s.ranks} | {s.threads} | {s.device} | "
                     f"{1000 * s.median_s['reassign']:.1f} | {1000 * s.median_s['fixed']:.1f}"
                     f" | {s.gather_share:.1%} | {s.solve_share:.1%} |")
    r = result.ratios
    lines += ["", f"Step time of {result.settings[1].ranks} ranks / one process: "
                  f"{r['reassign']:.2f}x (reassignment steps), {r['fixed']:.2f}x (fixed steps).",
              ""]
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def main(
    ranks: Annotated[int, typer.Option(min=2, help="torchrun ranks to compare with one "
                                                   "process.")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps of each kind.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps first.")] = 3,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Config overrides "
                                                        "[default: device=cpu].")] = None,
    out: Annotated[Path, typer.Option(help="Where the markdown (and .json beside it) go.")]
    = Path("benchmarks/results/tiny/distributed.md"),
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
) -> None:
    """Time N torchrun ranks against one process at the same global batch."""
    overrides = overrides or ["device=cpu"]
    if worker:
        _worker(overrides, steps, warmup)
        return
    result = distributed_speed(ranks, overrides, steps, warmup)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(distributed_markdown(result))
    out.with_suffix(".json").write_text(json.dumps(asdict(result), indent=1))
    typer.echo(distributed_markdown(result))


if __name__ == "__main__":
    app()
