"""Time and check the fused Triton auction (``natkit.solvers.auction``) against scipy on a GPU.

``python -m benchmarks.gpu_auction --out DIR [--device cuda|cpu] [--sizes 256 512 1024]`` solves fresh
NAT-like costs (``-(F @ T.T)``, rows of F and T L2-normalised Gaussians in R^2048) and the same costs
quantised as the paper preset does (``quantize=100000``). For each b it reports the median time of one
auction solve per launch (rotating among several matrices, after a warm-up that compiles), of scipy's
``linear_sum_assignment`` with the device-to-host-to-device copies that ``HungarianSolver`` makes, and of
``solve_batch`` on 8 problems per launch (``--batch``); and, on every timed matrix, the auction's cost gap
to scipy's optimum, the stated bound, the number of permutations that differ from scipy's and the rounds and
phases the kernel took. On CUDA it sweeps a few (bidders, num_warps) launch configurations. Writes
``gpu_auction.json`` and ``gpu_auction.md``. ``--device cpu`` runs the same kernel through Triton's
interpreter, for tiny sizes only (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from natkit.solvers.auction import launch_config, solve_batch
from natkit.solvers.hungarian import HungarianSolver, quantized_cost

QUANTIZE = 100000
CUDA_CONFIGS = ("default", "4:1", "8:2", "16:8", "32:8")  # bidders:num_warps


def nat_costs(count: int, b: int, seed: int, device: str, d: int = 2048) -> torch.Tensor:
    """``count`` NAT-like cost matrices ``-(F @ T.T)`` of unit Gaussian rows in R^d, float32."""
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(count, b, d, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(count, b, d, generator=g), dim=-1)
    return (-(f @ t.transpose(1, 2))).to(device)


def median_ms(fn: Callable[[int], object], repeats: int, device: str) -> float:
    """Median wall time of ``fn(i)`` for i in range(repeats), in ms, the device synchronised per call."""
    times = []
    for i in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def parse_config(text: str) -> tuple[int | None, int | None]:
    """``"default"`` or ``"bidders:num_warps"``."""
    if text == "default":
        return None, None
    bidders, warps = text.split(":")
    return int(bidders), int(warps)


def measure(costs: torch.Tensor, quantize: int | None, config: str, repeats: int, device: str,
            hungarian_ms: float | None, batch_size: int) -> dict:
    """One row: timings and the exactness check of one (b, cost kind, launch config)."""
    count, b = costs.shape[0], costs.shape[1]
    bidders, warps = parse_config(config)
    opts = dict(quantize=quantize, bidders=bidders, num_warps=warps)
    block, k, r, w = launch_config(b, bidders, warps)
    # exactness on every matrix that is timed, with the kernel's own effort counters
    stats = torch.zeros(count, 2, dtype=torch.int32, device=device)
    perms = solve_batch(costs, stats=stats, **opts)
    gaps, differing = [], 0
    for cost, perm in zip(costs.cpu().double().numpy(), perms.cpu().numpy(), strict=True):
        values = quantized_cost(cost, quantize) if quantize else cost
        rows, ref = linear_sum_assignment(values)
        valid = sorted(perm.tolist()) == list(range(b))
        gaps.append(float(values[rows, perm].sum() - values[rows, ref].sum()) if valid else float("inf"))
        differing += int(not np.array_equal(perm, ref))
    bound = 0.0 if quantize else float(costs.abs().amax()) * float(torch.finfo(torch.float32).eps)
    solve_batch(costs[:1], **opts)  # warm-up (compilation) for one problem per launch
    auction = median_ms(lambda i: solve_batch(costs[i % count][None], **opts), repeats, device)
    batch = costs[torch.arange(batch_size) % count]
    solve_batch(batch, **opts)
    batched = median_ms(lambda i: solve_batch(batch, **opts), max(repeats // 2, 1), device)
    return dict(b=b, costs="quantized" if quantize else "float", config=config, bidders=k, num_warps=w,
                block=block, scan_rows=r, auction_ms=auction, hungarian_ms=hungarian_ms,
                speedup=hungarian_ms / auction if hungarian_ms else None,
                batch_size=batch_size, batch_ms=batched, batch_per_problem_ms=batched / batch_size,
                rounds_median=statistics.median(stats[:, 0].tolist()),
                phases_median=statistics.median(stats[:, 1].tolist()),
                max_gap=max(gaps), bound=bound, differing_perms=differing, matrices=count)


def markdown(report: dict) -> str:
    """The rows as a small Markdown table."""
    lines = [f"# Triton auction vs scipy ({report['device']})", "",
             "| b | costs | config (K:warps) | auction ms | scipy+copy ms | speedup | batched ms per problem "
             "| rounds | phases | max gap | bound | differing perms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['b']} | {r['costs']} | {r['config']} ({r['bidders']}:{r['num_warps']}) "
            f"| {r['auction_ms']:.3f} | {r['hungarian_ms']:.3f} | {r['speedup']:.2f}x "
            f"| {r['batch_per_problem_ms']:.3f} ({r['batch_size']}/launch) "
            f"| {r['rounds_median']:g} | {r['phases_median']:g} | {r['max_gap']:.3g} | {r['bound']:.3g} "
            f"| {r['differing_perms']}/{r['matrices']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark and write gpu_auction.json and gpu_auction.md under --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None, help="timed solves per measurement")
    parser.add_argument("--matrices", type=int, default=None, help="cost matrices per b and kind")
    parser.add_argument("--batch", type=int, default=None, help="problems per solve_batch launch")
    parser.add_argument("--configs", nargs="+", default=None, help="bidders:num_warps, or default")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    sizes = args.sizes or ([256, 512, 1024] if cuda else [5, 12])
    repeats = args.repeats or (30 if cuda else 2)
    count = args.matrices or (6 if cuda else 2)
    batch_size = args.batch or (8 if cuda else 2)
    configs = args.configs or (list(CUDA_CONFIGS) if cuda else ["default"])
    import triton

    where = torch.cuda.get_device_name() if cuda else f"cpu (Triton interpreter), {platform.node()}"
    report = {"device": where,
              "torch": torch.__version__, "triton": triton.__version__, "sizes": sizes, "repeats": repeats,
              "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for b in sizes:
        costs = nat_costs(count, b, seed=b, device=args.device)
        for quantize in (None, QUANTIZE):
            hungarian = HungarianSolver(quantize)
            hungarian(costs[0])
            hungarian_ms = median_ms(lambda i, h=hungarian, c=costs: h(c[i % count]), repeats, args.device)
            for config in configs:
                row = measure(costs, quantize, config, repeats, args.device, hungarian_ms, batch_size)
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                # written after every row, so a session cut short still leaves its results
                (args.out / "gpu_auction.json").write_text(json.dumps(report, indent=1))
                (args.out / "gpu_auction.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
