"""A few steps of the authors' recipe (``--preset paper``) on a generated ImageNet-layout folder.

``python -m benchmarks.paper_smoke`` writes a folder of ImageNet-like JPEGs
(about 500 x 375, photograph-like, in class folders), trains the paper preset on
it for a few steps in a fresh process (AlexNet at 224 px, Sobel, targets in
R^2048, Hungarian per batch, summed loss) and reports steps/s and images/s after
a warm-up, the process's peak RSS and, on CUDA, the peak GPU memory. It proves
the preset starts and trains on such a folder, and its step time is what the
reproduction page's cost of the full experiment is computed from. On a 2-core CPU
use a small batch (``--batch-size 32``): a step at the preset's 256 takes tens of
seconds there.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.loader import write_jpeg_folder
from benchmarks.timing import stopwatch, synchronizer, timed

CLASSES = 10


def write_folder(root: Path, images: int, size: tuple[int, int] = (500, 375), seed: int = 0,
                 classes: int = CLASSES) -> Path:
    """An ImageNet-layout folder ``root/train/<class>/*.jpg`` of photograph-like JPEGs."""
    write_jpeg_folder(root / "train", images, size, classes=classes, seed=seed)
    return root / "train"


def _child(root: str, steps: int, warmup: int, batch_size: int, workers: int, device: str,
           extra: list[str]) -> dict[str, Any]:
    """Train the preset in this process and time steps ``warmup..steps``."""
    import torch
    from rich.console import Console

    from natkit import config as cfg
    from natkit import lifecycle, presets
    from natkit.hookspecs import hookimpl
    from natkit.plugins import get_host

    config = cfg.build(overrides=[
        *presets.as_overrides("paper"), f"data.root={root}", "data.cache=false",
        f"train.batch_size={batch_size}", f"train.num_workers={workers}", "train.epochs=1000",
        f"device={device}", "eval.enabled=false", *extra])
    marks: dict[int, float] = {}
    clock = stopwatch()

    class Clock:
        @hookimpl
        def on_step_end(self, run: Any, metrics: dict[str, Any]) -> None:
            if run.step in (warmup, steps):
                synchronizer(run.device)()
                marks[run.step] = clock()
            if run.step >= steps:
                run.request_stop()

    get_host().register(Clock(), name="paper-smoke-clock")
    with tempfile.TemporaryDirectory(prefix="natkit-paper-") as tmp:
        run = lifecycle.start(config, Path(tmp) / "run", console=Console(stderr=True, quiet=True))
        total, _ = timed(lambda: lifecycle.execute(run, evaluate=False))
        cuda = run.device.type == "cuda"
        out = {
            "device": torch.cuda.get_device_name(run.device) if cuda else "cpu",
            "torch_threads": torch.get_num_threads(),
            "batch_size": batch_size, "workers": workers, "steps": steps, "warmup": warmup,
            "steps_done": run.step, "seconds_total": round(total, 2),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated(run.device) / 2**20)
            if cuda else None,
        }
    if warmup in marks and steps in marks:
        seconds = marks[steps] - marks[warmup]
        out["steps_per_s"] = (steps - warmup) / seconds
        out["images_per_s"] = out["steps_per_s"] * batch_size
    return out


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    steps: Annotated[int, typer.Option(help="training steps to run (the last one timed)")] = 6,
    warmup: Annotated[int, typer.Option(help="steps before the clock starts")] = 2,
    batch_size: Annotated[int, typer.Option(help="global batch (the preset: 256)")] = 256,
    workers: Annotated[int, typer.Option(help="DataLoader workers")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    out: Annotated[Path, typer.Option(help="folder for paper_smoke.md and .json")] = Path(
        "benchmarks/results/tiny"),
    keep_data: Annotated[Path | None, typer.Option(help="reuse or keep the generated folder "
                                                        "here")] = None,
    images: Annotated[int | None, typer.Option(
        help="JPEGs to generate (default: one epoch holds every step); fewer make the run "
             "cycle over them, epoch after epoch, as long runs do")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="more config overrides")] = None,
    child: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Train the paper preset for a few steps on generated JPEGs; report steps/s and memory."""
    if warmup < 1 or steps <= warmup:
        raise typer.BadParameter("need 1 <= --warmup < --steps")
    if child is not None:  # the fresh process that trains
        print(json.dumps(_child(child, steps, warmup, batch_size, workers, device, set_ or [])))
        return
    # the folder has no test tree: the image folder holds out a fifth of each class
    images = images or -(-steps * batch_size * 5 // 4) + 2 * CLASSES
    with tempfile.TemporaryDirectory(prefix="natkit-paper-data-") as tmp:
        data = keep_data or Path(tmp)
        if not (data / "train").is_dir() or sum(1 for _ in (data / "train").rglob("*.jpg")) < images:
            seconds, _ = timed(lambda: write_folder(data, images))
            print(f"wrote {images} JPEGs in {seconds:.0f} s", file=sys.stderr)
        args = [sys.executable, "-m", "benchmarks.paper_smoke", "--child", str(data),
                "--steps", str(steps), "--warmup", str(warmup), "--batch-size", str(batch_size),
                "--workers", str(workers), "--device", device,
                *[a for s in set_ or [] for a in ("--set", s)]]
        env = {**os.environ, "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(args, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise typer.Exit(proc.returncode)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the child is the only child process waited for: its peak resident memory
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    result["cpu_cores"] = os.cpu_count()
    result["images"] = images
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_smoke.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "paper_smoke.md").write_text(report(result))
    print(report(result))


def report(r: dict[str, Any]) -> str:
    """The smoke run as a short Markdown section."""
    rate = (f"{r['steps_per_s']:.3f} steps/s ({r['images_per_s']:.0f} images/s)"
            if "steps_per_s" in r else "not timed (the run stopped before the last step)")
    gpu = f", peak GPU memory {r['peak_gpu_mib']:,} MiB" if r.get("peak_gpu_mib") else ""
    return (
        "### The paper preset, a few steps\n\n"
        f"`--preset paper` (AlexNet at 224 px, targets in R^2048, Hungarian per batch, summed "
        f"loss) on {r['images']:,} generated photograph-like JPEGs of about 500 x 375 read from disk "
        f"(`data.cache=false`), batch "
        f"{r['batch_size']}, {r['workers']} workers, on {r['device']} ({r['cpu_cores']} CPU "
        f"cores, {r['torch_threads']} torch threads): {r['steps_done']} steps, steps "
        f"{r['warmup']}..{r['steps']} timed: {rate}; peak RSS {r['peak_rss_mib']:,} MiB{gpu}.\n")


if __name__ == "__main__":
    app()
