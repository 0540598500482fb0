"""The loader row of the speed suite: natkit's image-folder loader against torchvision's.

``python -m benchmarks.loader --workers 0 1 2 --out DIR`` writes seeded JPEG
folders (ImageNet-like ~500x375 photographs and large ~3000x2000 ones) to a
temporary directory and measures images per second of

* natkit: ``imagefolder`` (index cache, JPEG draft decoding, uint8 batches)
  through the engine's :class:`~natkit.datasets.loader.BatchLoader`, made
  float on the device (or the CPU) as ``train_step`` does;
* torchvision: ``datasets.ImageFolder`` with Resize(224) + CenterCrop(224) +
  ToTensor, through a DataLoader with the same workers and batch size;
* natkit with ``data.decode=gpu`` (nvJPEG), when CUDA is present.

Both loaders keep their workers between passes (persistent workers) and
start them in a few untimed batches first, so the passes time decoding and
transfer, not process start-up. Training on the CPU, natkit's workers make
the floats (as the engine's do); with CUDA they hand over uint8. Each setting runs ``--passes`` shuffled
passes over the folder; the tables give the medians. It also times building
the folder's file index and reading it back from the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from PIL import Image, ImageDraw

from benchmarks.timing import Machine, machine, median, stopwatch, synchronizer, timed

FOLDERS = {"imagenet": (500, 375), "large": (3000, 2000)}  # width, height of the photographs
WARMUP_BATCHES = 2


@dataclass(frozen=True)
class LoaderTiming:
    """One loader on one folder with some workers: images per second of each pass."""

    folder: str
    loader: str
    workers: int
    images_per_s: tuple[float, ...]
    median_images_per_s: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderTiming:
        """The row as loader.json stored it."""
        return cls(**{**data, "images_per_s": tuple(data["images_per_s"])})


@dataclass(frozen=True)
class LoaderResult:
    """Every row of the loader benchmark, the settings, and the file index's timings
    (``index``: folder -> build_s, cached_s and, on CUDA, the GPU decode's difference)."""

    machine: Machine
    device: str
    counts: dict[str, int]  # folder -> images
    sizes: dict[str, list[int]]  # folder -> width, height
    batch_size: int
    passes: int
    image_size: int
    index: dict[str, dict[str, float]]
    rows: tuple[LoaderTiming, ...]
    seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoaderResult:
        """The result as loader.json stored it (its notes aside)."""
        data = {k: v for k, v in data.items() if k != "notes"}
        return cls(**{**data, "machine": Machine.from_dict(data["machine"]),
                      "rows": tuple(LoaderTiming.from_dict(r) for r in data["rows"])})


def photograph(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A seeded stand-in for a photograph: smooth shapes of colour, edges and fine noise."""
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(4):  # a few discs: sharp edges, as objects have
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * height
        draw.ellipse((cx - r, cy - r, cx + r, cy + r),
                     fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))
    noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)  # texture
    pixels = np.asarray(image, dtype=np.int16) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_jpeg_folder(root: Path, count: int, size: tuple[int, int], *, classes: int = 8,
                      seed: int = 0, quality: int = 90) -> Path:
    """``count`` seeded JPEGs of about ``size`` (width, height) in ``classes`` class folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = size
        if i % 4 == 3:  # some portrait ones, as in real folders
            w, h = h, w
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        jitter = rng.uniform(0.9, 1.1)
        photograph(rng, round(w * jitter), round(h * jitter)).save(folder / f"{i:05d}.jpg",
                                                                 quality=quality)
    return root


def _timed_passes(run_pass: Callable[[int], Iterable[torch.Tensor]], passes: int,
                  device: torch.device) -> list[float]:
    """Images per second of each pass, after ``WARMUP_BATCHES`` untimed batches (workers started)."""
    for b, _ in enumerate(run_pass(0)):
        if b + 1 >= WARMUP_BATCHES:
            break
    sync = synchronizer(device)
    speeds = []
    for p in range(1, passes + 1):
        sync()
        elapsed, count = stopwatch(), 0
        for images in run_pass(p):
            count += images.shape[0]
        sync()
        speeds.append(count / elapsed())
    return speeds


def _orders(n: int, batch_size: int, seed: int, p: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + p))
    return order[: n - n % batch_size].view(-1, batch_size)


def natkit_speeds(root: Path, workers: int, batch_size: int, passes: int, size: int,
                  device: torch.device, decode: str = "cpu") -> list[float]:
    """natkit's loader as the engine uses it, images made float on ``device``."""
    from natkit.datasets import imagefolder
    from natkit.datasets.loader import BatchLoader
    from natkit.transfer import prefetch, to_device, to_float

    ds = imagefolder.create(split="train", root=str(root), image_size=size, cache=False,
                            decode=decode)
    with BatchLoader(ds, workers, torch.Generator().manual_seed(0), device) as loader:
        def run_pass(p: int) -> Iterable[torch.Tensor]:
            for images, _, _ in prefetch(loader.epoch(_orders(len(ds), batch_size, 0, p)), device):
                yield to_float(to_device(images, device))

        return _timed_passes(run_pass, passes, device)


def torchvision_speeds(root: Path, workers: int, batch_size: int, passes: int, size: int,
                       device: torch.device) -> list[float]:
    """torchvision's ImageFolder with Resize + CenterCrop + ToTensor, the same workers and batch."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(str(root / "train"), transform=transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(0))

    def run_pass(p: int) -> Iterable[torch.Tensor]:
        for images, _ in loader:
            yield images.to(device, non_blocking=True)

    return _timed_passes(run_pass, passes, device)


def index_seconds(root: Path) -> dict[str, float]:
    """Seconds to build the folder's file index (listing, headers) and to read it back."""
    from natkit.datasets.index import folder_index, index_path

    index_path((root / "train").resolve()).unlink(missing_ok=True)
    build_s, _ = timed(lambda: folder_index(root / "train"))
    cached_s, cached = timed(lambda: folder_index(root / "train"))
    assert cached.cached
    return {"build_s": build_s, "cached_s": cached_s}


def gpu_decode_difference(root: Path, size: int, device: torch.device) -> float:
    """Mean absolute difference (of 255) between GPU-decoded and CPU-decoded images of ``root``."""
    from natkit.datasets import imagefolder

    gpu = imagefolder.create(split="train", root=str(root), image_size=size, cache=False,
                             decode="gpu")
    cpu = imagefolder.create(split="train", root=str(root), image_size=size, cache=False)
    idx = torch.arange(min(len(cpu), 64))
    on_gpu = gpu.decode_raw(gpu.raw_batch(idx), device).float().cpu()
    return float((on_gpu - cpu.raw_batch(idx).float()).abs().mean())


@contextlib.contextmanager
def _cache_in(folder: Path) -> Iterator[None]:
    """natkit's cache in ``folder`` (the generated folders' indexes go with them), unless set."""
    if os.environ.get("NATKIT_CACHE_DIR"):
        yield
        return
    os.environ["NATKIT_CACHE_DIR"] = str(folder / "cache")
    try:
        yield
    finally:
        del os.environ["NATKIT_CACHE_DIR"]


def loader_speed(workers: Sequence[int], counts: dict[str, int], batch_size: int = 64,
                 passes: int = 3, size: int = 224, seed: int = 0,
                 device: torch.device | None = None) -> LoaderResult:
    """Images per second of natkit's and torchvision's loaders on generated JPEG folders."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elapsed = stopwatch()
    rows, index = [], {}
    with tempfile.TemporaryDirectory(prefix="natkit-loader-") as tmp, _cache_in(Path(tmp)):
        for kind, count in counts.items():
            if count < batch_size:
                raise typer.BadParameter(f"--{kind} {count}: need at least one batch "
                                         f"({batch_size} images)")
            root = Path(tmp) / kind
            write_jpeg_folder(root / "train", count, FOLDERS[kind], seed=seed)
            write_jpeg_folder(root / "val", 8, FOLDERS[kind], seed=seed + 1)
            index[kind] = index_seconds(root)
            if device.type == "cuda":
                index[kind]["gpu_vs_cpu_decode_mean_abs"] = gpu_decode_difference(root, size,
                                                                                  device)
            for w in workers:
                settings = [("natkit", lambda r, w=w: natkit_speeds(r, w, batch_size, passes, size,
                                                                   device)),
                            ("torchvision", lambda r, w=w: torchvision_speeds(
                                r, w, batch_size, passes, size, device))]
                if device.type == "cuda":
                    settings.append(("natkit gpu decode", lambda r, w=w: natkit_speeds(
                        r, w, batch_size, passes, size, device, decode="gpu")))
                for name, measure in settings:
                    speeds = measure(root)
                    rows.append(LoaderTiming(kind, name, w, tuple(speeds), median(speeds)))
                    typer.echo(f"{kind:9s} workers {w:2d}  {name:18s} "
                               f"{median(speeds):8.1f} img/s", err=True)
    return LoaderResult(machine(), str(device), counts, {k: list(FOLDERS[k]) for k in counts},
                        batch_size, passes, size, index, tuple(rows), elapsed())


def loader_markdown(result: LoaderResult, notes: str = "") -> str:
    """The loader benchmark as a markdown section."""
    m = result.machine
    lines = ["#### Loader: natkit's image-folder loader against torchvision's ImageFolder", "",
             f"{m.cores} cores ({m.cpu}), device {result.device}"
             f"{' (' + m.cuda + ')' if m.cuda else ''}; batch {result.batch_size}, "
             f"images loaded at {result.image_size} px; median of {result.passes} "
             "shuffled passes after a warm-up; persistent workers for both. torchvision: "
             "Resize + CenterCrop + ToTensor (float on the host); natkit: draft-mode JPEG "
             "decoding, the central square resized, "
             + ("uint8 batches (pinned) made float on the device." if result.device != "cpu"
                else "floats made by the workers (by the main process with 0 workers)."), ""]
    loaders = list(dict.fromkeys(r.loader for r in result.rows))
    header = ["folder", "workers", *[f"{name} img/s" for name in loaders],
              *[f"{name} / torchvision" for name in loaders if name != "torchvision"]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(dict.fromkeys((r.folder, r.workers) for r in result.rows))
    for folder, w in keys:
        speed = {r.loader: r.median_images_per_s for r in result.rows
                 if (r.folder, r.workers) == (folder, w)}
        size = "x".join(map(str, result.sizes[folder]))
        cells = [f"{folder} ({result.counts[folder]} of ~{size})", str(w),
                 *[f"{speed[n]:,.0f}" if n in speed else "-" for n in loaders],
                 *[f"{speed[n] / speed['torchvision']:.2f}x" if n in speed else "-"
                   for n in loaders if n != "torchvision"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "File index (listing and header checks) built once, then read from the cache:",
              ""]
    for folder, t in result.index.items():
        gpu = (f"; GPU-decoded images differ from CPU-decoded ones by "
               f"{t['gpu_vs_cpu_decode_mean_abs']:.2f}/255 on average"
               if "gpu_vs_cpu_decode_mean_abs" in t else "")
        lines.append(f"- {folder}: built in {1000 * t['build_s']:.0f} ms, read back in "
                     f"{1000 * t['cached_s']:.1f} ms{gpu}")
    if notes:
        lines += ["", notes]
    lines += ["", f"Total {result.seconds:.0f} s.", ""]
    return "\n".join(lines)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def main(
    workers: Annotated[list[int], typer.Option(help="Worker counts to time (repeat or list "
                                                    "them: --workers 0 1 2).")] = [0, 2],  # noqa: B006
    imagenet: Annotated[int, typer.Option(help="ImageNet-like JPEGs (~500x375).")] = 512,
    large: Annotated[int, typer.Option(help="Large JPEGs (~3000x2000).")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
    passes: Annotated[int, typer.Option(min=1, help="Timed passes per setting.")] = 3,
    notes: Annotated[str, typer.Option(help="A line added under the table.")] = "",
    out: Annotated[Path, typer.Option(help="Folder for loader.md and loader.json.")]
    = Path("benchmarks/results/tiny"),
) -> None:
    """Time natkit's image-folder loader against torchvision's on generated JPEG folders."""
    counts = {k: v for k, v in (("imagenet", imagenet), ("large", large)) if v > 0}
    result = loader_speed(workers, counts, batch_size, passes)
    out.mkdir(parents=True, exist_ok=True)
    text = loader_markdown(result, notes)
    (out / "loader.md").write_text(text)
    (out / "loader.json").write_text(json.dumps({**asdict(result), "notes": notes}, indent=1))
    typer.echo(text)


if __name__ == "__main__":
    import sys

    # `--workers 0 1 2` (several values after one flag) as well as typer's `--workers 0 --workers 1`
    argv, i = sys.argv[1:], 0
    fixed: list[str] = []
    while i < len(argv):
        fixed.append(argv[i])
        if argv[i] == "--workers" and i + 1 < len(argv):
            fixed.append(argv[i + 1])
            i += 2
            while i < len(argv) and not argv[i].startswith("--"):
                fixed += ["--workers", argv[i]]
                i += 1
            continue
        i += 1
    app(fixed)
