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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

OUT_ENV = "NATKIT_BENCH_OUT"


def _worker(overrides: Sequence[str], steps: int, warmup: int) -> None:
    """Time ``steps`` reassignment and fixed steps in this process (one rank of the run)."""
    import torch
    from rich.console import Console

    from benchmarks.speed import TimedSolver, synchronizer
    from natkit import config as cfg
    from natkit import distributed, engine

    comm = distributed.from_environment("cpu" if "device=cpu" in overrides else "auto")
    config = cfg.build(overrides=[*overrides, f"world_size={comm.world_size}"])
    spent = {"gather": 0.0}

    @dataclass(frozen=True)
    class TimedComm(distributed.Comm):
        def all_gather(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
            t0 = time.perf_counter()
            out = super().all_gather(tensor, what)
            spent["gather"] += time.perf_counter() - t0
            return out

    with tempfile.TemporaryDirectory(prefix="natkit-dist-") as tmp:
        run = engine.Run(config, Path(tmp), console=Console(stderr=True, quiet=True), comm=comm)
        method = run.method
        method.comm = TimedComm(comm.rank, comm.world_size, comm.local_rank, comm.device,
                                comm.cpu_group)
        sync = synchronizer(run.device)
        method.solver = solver = TimedSolver(method.solver, sync)
        share = config.train.batch_size // comm.world_size
        rows = run.epoch_batches(0)[:, comm.rank * share:(comm.rank + 1) * share]
        times: dict[str, list[float]] = {"reassign": [], "fixed": []}
        shares: list[dict[str, float]] = []
        for i in range(warmup + steps):
            for mode in ("reassign", "fixed"):
                idx = rows[i % len(rows)]
                images, labels = run.dataset.get_batch(idx), run.dataset.labels[idx]
                method.reassigning = mode == "reassign"
                spent["gather"] = 0.0
                solves = len(solver.seconds)
                comm.barrier("starting a timed step")
                sync()
                t0 = time.perf_counter()
                loss, _ = run.train_step(images, idx, labels)
                float(loss)
                sync()
                seconds = time.perf_counter() - t0
                if i >= warmup:
                    times[mode].append(seconds)
                    if mode == "reassign":
                        shares.append({"gather": spent["gather"] / seconds,
                                       "solve": sum(solver.seconds[solves:]) / seconds})
    if comm.is_main:
        result = {
            "ranks": comm.world_size, "device": str(run.device),
            "threads": torch.get_num_threads(), "batch_size": config.train.batch_size,
            "median_s": {mode: statistics.median(v) for mode, v in times.items()},
            "gather_share": statistics.median(s["gather"] for s in shares),
            "solve_share": statistics.median(s["solve"] for s in shares),
        }
        Path(os.environ[OUT_ENV]).write_text(json.dumps(result))
    distributed.shutdown(comm)


def _launch(ranks: int, overrides: Sequence[str], steps: int, warmup: int,
            threads: int) -> dict[str, Any]:
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
        return json.loads(out.read_text())


def distributed_speed(ranks: int = 2, overrides: Sequence[str] = ("device=cpu",),
                      steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Step times of one process and of ``ranks`` torchrun ranks at the same global batch."""
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    one = _launch(1, overrides, steps, warmup, threads=cores)
    many = _launch(ranks, overrides, steps, warmup, threads=max(1, cores // ranks))
    return {"overrides": list(overrides), "steps": steps, "warmup": warmup, "cores": cores,
            "settings": [one, many],
            "ratios": {mode: many["median_s"][mode] / one["median_s"][mode]
                       for mode in ("reassign", "fixed")},
            "seconds": time.perf_counter() - started}


def distributed_markdown(result: dict[str, Any]) -> str:
    """The distributed row as a markdown section."""
    lines = ["#### Distributed: torchrun ranks against one process", "",
             f"Training steps of the default run (global batch "
             f"{result['settings'][0]['batch_size']}) on {result['cores']} cores; "
             f"{result['steps']} timed steps of each kind after {result['warmup']} warm-up ones, "
             "medians. A reassignment step includes the all-gather of the batch's features and "
             "rank 0's solve; their shares are of that step's time.", "",
             "| processes | threads each | device | reassignment step ms | fixed step ms | "
             "all-gather share | solve share |",
             "|---|---|---|---|---|---|---|"]
    for s in result["settings"]:
        lines.append(f"| {s['ranks']} | {s['threads']} | {s['device']} | "
                     f"{1000 * s['median_s']['reassign']:.1f} | {1000 * s['median_s']['fixed']:.1f}"
                     f" | {s['gather_share']:.1%} | {s['solve_share']:.1%} |")
    r = result["ratios"]
    lines += ["", f"Step time of {result['settings'][1]['ranks']} ranks / one process: "
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
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    typer.echo(distributed_markdown(result))


if __name__ == "__main__":
    app()
