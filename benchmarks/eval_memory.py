"""Peak memory of the evaluation against the number of images: it should not grow with n.

``python -m benchmarks.eval_memory`` evaluates a small AlexNet (trained weights
are not needed: its initial weights make the probes do the same work) on n = 5k,
20k and 80k training images, each n in a fresh process, and reports that
process's peak resident memory (getrusage)
and the size of the evaluation's float16 feature files. The images are rendered
on demand from (seed, index), so the dataset takes no memory that grows with n:
whatever grows is the evaluation's. The probes read features in chunks of
``--chunk-mb`` MiB, set below the features' size here so that the streamed path
is the one measured; the goal is a peak RSS within 10% between 20k and 80k.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.timing import timed

SIZES = (5_000, 20_000, 80_000)
GOAL = 0.10  # peak RSS may grow at most this much from 20k to 80k images
# a small AlexNet at 32 px, the two fast probes and a short MLP: minutes on 2 CPU cores
OVERRIDES = (
    "data.image_size=32", "backbone.widths=[8,16,32,32,16]", "backbone.fc=[32]",
    "targets.dim=8", "eval.probes=[linear,knn,mlp]", "eval.linear_iterations=30",
    "eval.linear_weight_decay=[0.0001,0.01]", "eval.knn_k=[5,20]", "eval.mlp_epochs=1",
    "eval.mlp_hidden=64", "eval.mlp_weight_decay=[0.001]", "eval.plots=false", "device=cpu",
)
# glibc raises its mmap threshold as big blocks are freed, after which chunk-sized buffers come
# from a heap that fragments: the peak then varies by a few hundred MiB from run to run,
# whatever n. Pinning the threshold makes the RSS measure the memory actually in use.
PINNED = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def stripes_dataset(split: str = "train", num_train: int = 1000, num_test: int = 250,
                    image_size: int = 32, seed: int = 0) -> Any:
    """Striped images rendered on demand: the stripes' angle is the class (ten classes)."""
    import torch

    from natkit.datasets.base import ImageDataset

    class Stripes(ImageDataset):
        def __init__(self) -> None:
            self.n = num_train if split == "train" else num_test
            self.classes = [f"angle{c}" for c in range(10)]
            self.channels, self.image_size = 3, image_size
            self.labels = torch.arange(self.n) % 10
            self.offset = 0 if split == "train" else 1 << 30  # other images for the test split

        def __len__(self) -> int:
            return self.n

        def load(self, index: int) -> torch.Tensor:
            return self.get_batch(torch.tensor([index]))[0]

        def get_batch(self, indices: torch.Tensor) -> torch.Tensor:
            g = torch.Generator()
            side = torch.linspace(-1, 1, image_size)
            yy, xx = torch.meshgrid(side, side, indexing="ij")
            out = []
            for i in indices.tolist():
                g.manual_seed(seed * 1_000_003 + self.offset + i)
                angle = math.pi * (i % 10) / 10 + 0.1 * float(torch.randn(1, generator=g))
                phase = 2 * math.pi * float(torch.rand(1, generator=g))
                wave = torch.sin(8 * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
                colour = 0.2 + 0.6 * torch.rand(3, 1, 1, generator=g)
                noise = 0.15 * torch.randn(3, image_size, image_size, generator=g)
                out.append((0.5 + colour * 0.4 * wave + noise).clamp(0, 1))
            return torch.stack(out)

    return Stripes()


def _child(n: int, chunk_mb: float, extra: list[str]) -> dict[str, Any]:
    """Evaluate one n in this process; returns what it measured."""
    import torch
    from rich.console import Console

    from natkit import config as cfg
    from natkit.builders import build_method, initial_network, load_dataset
    from natkit.evaluation.protocol import evaluate
    from natkit.plugins import get_host

    get_host().registry("dataset").add("eval_memory_stripes", stripes_dataset,
                                       plugin="benchmarks.eval_memory")
    config = cfg.build(overrides=[
        "data.name=eval_memory_stripes", f"data.num_train={n}", f"data.num_test={n // 8}",
        *OVERRIDES, f"eval.chunk_mb={chunk_mb}", *extra])
    train = load_dataset(config, "train")
    state = initial_network(config, train, build_method(config, train,
                                                        torch.device("cpu"))).state_dict()
    seconds, out = timed(lambda: evaluate(config, state, console=Console(stderr=True, quiet=True)))
    details = out["details"]
    return {"n": n, "test_images": details["test_images"], "feature_dim": details["feature_dim"],
            "store_bytes": details["feature_store"]["bytes"],
            "seconds": round(seconds, 1), "results": out["results"],
            "threads": torch.get_num_threads(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def measure(sizes: tuple[int, ...] = SIZES, chunk_mb: float = 8.0,
            extra: tuple[str, ...] = (), pinned: bool = True) -> dict[str, Any]:
    """Each n in a fresh process; the rows and the 20k -> 80k growth of peak RSS."""
    rows = []
    env = {**os.environ, "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1", **(PINNED if pinned else {})}
    for n in sizes:
        args = [sys.executable, "-m", "benchmarks.eval_memory", "--child", str(n),
                "--chunk-mb", str(chunk_mb), *[a for s in extra for a in ("--set", s)]]
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"n={n}: peak RSS {rows[-1]['peak_rss_mib']} MiB in {rows[-1]['seconds']} s",
              file=sys.stderr)
    by_n = {r["n"]: r for r in rows}
    growth = (by_n[80_000]["peak_rss_mib"] / by_n[20_000]["peak_rss_mib"] - 1
              if {20_000, 80_000} <= by_n.keys() else None)
    return {"rows": rows, "chunk_mb": chunk_mb, "overrides": [*OVERRIDES, *extra],
            "malloc": PINNED if pinned else "glibc defaults",
            "growth_20k_80k": growth, "goal": GOAL, "cpu_cores": os.cpu_count(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def report(r: dict[str, Any]) -> str:
    """The measurement as a Markdown section."""
    lines = [
        "### Evaluation memory against the number of images", "",
        f"`natkit eval`'s `evaluate()` in a fresh process per n (trained and random-init "
        f"network, linear, kNN and MLP probes) on images rendered on demand, so the data "
        f"take no memory that grows with n; features are written to float16 files and read "
        f"back in chunks of `eval.chunk_mb={r['chunk_mb']:g}`. Allocator: "
        f"{'MALLOC_MMAP_THRESHOLD_=1 MiB (pinned)' if r['malloc'] != 'glibc defaults' else r['malloc']}"
        f". {r['cpu_cores']} CPU cores, "
        f"{r['rows'][0]['threads']} torch threads, {r['date']}.", "",
        "| train images | test images | feature dims | peak RSS MiB | feature files MiB | "
        "seconds |", "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['n']:,} | {row['test_images']:,} | {row['feature_dim']} | "
                     f"{row['peak_rss_mib']:,} | {row['store_bytes'] / 2**20:.1f} | "
                     f"{row['seconds']:.0f} |")
    if r["growth_20k_80k"] is not None:
        met = "met" if r["growth_20k_80k"] <= r["goal"] else "NOT met"
        lines += ["", f"Peak RSS from 20k to 80k images: {r['growth_20k_80k']:+.1%} "
                      f"(goal: within {r['goal']:.0%}, {met})."]
    return "\n".join(lines) + "\n"


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def main(
    sizes: Annotated[list[int] | None, typer.Option("--n", help="Training images per "
                                                    "measurement [default: 5000 20000 80000]."
                                                    )] = None,
    chunk_mb: Annotated[float, typer.Option(help="eval.chunk_mb of the measured runs.")] = 8.0,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="More config "
                                                        "overrides.")] = None,
    out: Annotated[Path, typer.Option(help="Where the markdown (and .json beside it) go.")]
    = Path("benchmarks/results/tiny/eval_memory.md"),
    pin_malloc: Annotated[bool, typer.Option(help="Pin glibc's mmap threshold at 1 MiB in "
                                                   "the measured processes.")] = True,
    child: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Peak RSS of the evaluation at several numbers of images."""
    if child is not None:  # the fresh process that evaluates
        print(json.dumps(_child(child, chunk_mb, overrides or [])))
        return
    result = measure(tuple(sizes or SIZES), chunk_mb, tuple(overrides or ()), pin_malloc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(result))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    typer.echo(report(result))


if __name__ == "__main__":
    app()
