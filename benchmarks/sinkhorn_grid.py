"""How the ``sinkhorn`` solver's defaults were chosen: gap and time over (reg, iterations).

``python -m benchmarks.sinkhorn_grid [--device cpu] [--out DIR]`` solves NAT costs of several
seeds at each batch size with every (reg, num_iter_max) pair and reports the median time, the
mean and worst optimality gap, and scipy's time on the same matrices.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.optimize import linear_sum_assignment

from benchmarks.markdown import ms, table
from benchmarks.speed.solvers import nat_cost, optimality_gap, optimum
from benchmarks.timing import Machine, describe, machine, median, synchronizer, timed
from natkit import builders
from natkit.solvers.sinkhorn import SinkhornSolver


@dataclass(frozen=True)
class GridCell:
    """One (b, reg, iterations): the median solve, the mean and worst gap in %, scipy's time."""

    b: int
    reg: float
    iterations: int
    seconds: float
    gap_mean_pct: float
    gap_max_pct: float
    scipy_s: float
    seeds: int
    device: str


def sinkhorn_grid(sizes: Sequence[int] = (64, 256, 1024), regs: Sequence[float] = (0.02, 0.03, 0.05),
                  iterations: Sequence[int] = (30, 50, 100), seeds: int = 4, dim: int = 2048,
                  device: str = "cpu") -> list[GridCell]:
    """One cell per (b, reg, iterations): median seconds, mean and max gap in %, scipy's seconds."""
    dev = builders.pick_device(device)
    sync = synchronizer(dev)
    rows = []
    for b in sizes:
        costs = [nat_cost(b, dim, seed, dev) for seed in range(seeds)]
        bests = [optimum(c) for c in costs]
        scipy_s = median([
            timed(lambda c=c: linear_sum_assignment(c.detach().to("cpu", torch.float64).numpy()),
                  sync)[0] for c in costs])
        for reg in regs:
            for iters in iterations:
                solver = SinkhornSolver(reg=reg, num_iter_max=iters)
                times, gaps = [], []
                for cost, best in zip(costs, bests, strict=True):
                    solver(cost)  # warm-up
                    seconds, perm = timed(lambda cost=cost, solver=solver: solver(cost), sync)
                    times.append(seconds)
                    gaps.append(optimality_gap(cost, perm, best))
                rows.append(GridCell(b, reg, iters, median(times), statistics.fmean(gaps), max(gaps),
                                     scipy_s, seeds, str(dev)))
    return rows


def grid_markdown(rows: list[GridCell], info: Machine) -> str:
    """The grid as one markdown table, with the machine it ran on."""
    body = [[str(r.b), f"{r.reg:g}", str(r.iterations), ms(r.seconds),
             f"{r.seconds / r.scipy_s:.2g}×", f"{r.gap_mean_pct:.2f}", f"{r.gap_max_pct:.2f}"]
            for r in rows]
    seeds = rows[0].seeds if rows else 0
    return "\n".join([
        "### Sinkhorn: regularisation and iterations", "",
        f"NAT costs of {seeds} seeds per b (d = 2048, float32 on {rows[0].device if rows else '?'}); "
        "time is the median solve (rounding included), the ratio is to scipy's hungarian on the "
        "same matrices, gaps are % above scipy's optimum.", "",
        *table(["b", "reg", "iterations", "ms", "to scipy", "mean gap %", "worst gap %"], body), "",
        f"Measured on {describe(info)}.", ""])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Gap and time of sinkhorn over (reg, iterations).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tiny"))
    args = parser.parse_args()
    text = grid_markdown(sinkhorn_grid(device=args.device), machine())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sinkhorn_grid.md").write_text(text)
    print(text)
