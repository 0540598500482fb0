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

It measures scaling: each setting is one stream of batches (shuffled passes, back to
back) whose first two batches per worker start the workers untimed, and whose next
``--batches-per-worker`` x workers batches (as many as for 1 with 0 workers) are
timed in steady state. A loader's ``efficiency`` is its rate over (workers x its
one-core rate: the same decoding, image by image on one thread in this process, in
the same run). It also times building the folder's file index and reading it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from PIL import Image, ImageDraw

from benchmarks.timing import Machine, machine, median, stopwatch, synchronizer, timed

FOLDERS = {"imagenet": (500, 375), "large": (3000, 2000)}  # width, height of the photographs
WARMUP_PER_WORKER = 2  # untimed batches per worker: they start, and fill their queues
BATCHES_PER_WORKER = 20  # timed batches per worker, in steady state


@dataclass(frozen=True)
class LoaderTiming:
    """One loader on one folder with some workers: images per second of each pass."""

    folder: str
    loader: str
    workers: int
    images_per_s: tuple[float, ...]
    median_images_per_s: float
    # the rate over (workers x the loader's one-core rate); None in results measured before it
    efficiency: float | None = None
    timed_batches: int = 0

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
    # folder -> loader -> images/s of its decoding, one image at a time on one thread
    one_core: dict[str, dict[str, float]] = field(default_factory=dict)

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


def warmup_batches(workers: int) -> int:
    """Untimed batches before the timing starts: enough for every worker to start and queue."""
    return WARMUP_PER_WORKER * max(workers, 1)


def timed_batches(workers: int, per_worker: int = BATCHES_PER_WORKER) -> int:
    """Batches timed in steady state: ``per_worker`` for each worker (the main process with 0)."""
    return per_worker * max(workers, 1)


def _steady_rate(stream: Iterable[torch.Tensor], warmup: int, timed: int,
                 device: torch.device) -> float:
    """Images per second over ``timed`` batches of ``stream``, after ``warmup`` untimed ones."""
    sync = synchronizer(device)
    batches = iter(stream)
    for _ in range(warmup):
        next(batches)
    sync()
    elapsed, count = stopwatch(), 0
    for _ in range(timed):
        count += next(batches).shape[0]
    sync()
    return count / elapsed()


def _orders(n: int, batch_size: int, seed: int, p: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + p))
    return order[: n - n % batch_size].view(-1, batch_size)


def stream_rows(n: int, batch_size: int, batches: int, seed: int = 0) -> torch.Tensor:
    """``batches`` rows of dataset indices: shuffled passes over ``n`` images, back to back."""
    per_pass = n // batch_size
    if per_pass < 1:
        raise ValueError(f"{n} images make no batch of {batch_size}")
    passes = -(-batches // per_pass)
    rows = torch.cat([_orders(n, batch_size, seed, p) for p in range(passes)])
    return rows[:batches]


def natkit_speed(root: Path, workers: int, batch_size: int, size: int, device: torch.device,
                 decode: str = "cpu", per_worker: int = BATCHES_PER_WORKER) -> float:
    """natkit's loader as the engine uses it, images made float on ``device``: steady images/s."""
    from natkit.datasets import imagefolder
    from natkit.datasets.loader import BatchLoader
    from natkit.transfer import prefetch, to_device, to_float

    ds = imagefolder.create(split="train", root=str(root), image_size=size, cache=False,
                            decode=decode)
    warmup, timed = warmup_batches(workers), timed_batches(workers, per_worker)
    rows = stream_rows(len(ds), batch_size, warmup + timed)
    with BatchLoader(ds, workers, torch.Generator().manual_seed(0), device) as loader:
        stream = (to_float(to_device(images, device))
                  for images, _, _ in prefetch(loader.epoch(rows), device))
        return _steady_rate(stream, warmup, timed, device)


def torchvision_speed(root: Path, workers: int, batch_size: int, size: int,
                      device: torch.device, per_worker: int = BATCHES_PER_WORKER) -> float:
    """torchvision's ImageFolder with Resize + CenterCrop + ToTensor, the same workers and batches."""
    from torch.utils.data import DataLoader

    ds = _torchvision_folder(root, size)
    warmup, timed = warmup_batches(workers), timed_batches(workers, per_worker)
    rows = stream_rows(len(ds), batch_size, warmup + timed).tolist()
    loader = DataLoader(ds, batch_sampler=rows, num_workers=workers,
                        pin_memory=device.type == "cuda")
    stream = (images.to(device, non_blocking=True) for images, _ in loader)
    return _steady_rate(stream, warmup, timed, device)


def _torchvision_folder(root: Path, size: int) -> Any:
    from torchvision import datasets, transforms

    return datasets.ImageFolder(str(root / "train"), transform=transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()]))


def one_core_rates(root: Path, size: int, count: int = 64) -> dict[str, float]:
    """Images/s of each loader's decoding, one image at a time in this process on one thread."""
    from natkit.datasets import imagefolder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = imagefolder.create(split="train", root=str(root), image_size=size, cache=False)
        theirs = _torchvision_folder(root, size)
        n = min(count, len(ours), len(theirs))
        natkit_s, _ = timed(lambda: [ours.load(i) for i in range(n)])
        torchvision_s, _ = timed(lambda: [theirs[i][0] for i in range(n)])
    finally:
        torch.set_num_threads(threads)
    return {"natkit": n / natkit_s, "torchvision": n / torchvision_s}


def efficiency(images_per_s: float, workers: int, one_core: float) -> float:
    """A loader's rate over what its workers would give if each decoded at the one-core rate."""
    return images_per_s / (max(workers, 1) * one_core)


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
                 passes: int = 1, size: int = 224, seed: int = 0,
                 device: torch.device | None = None,
                 per_worker: int = BATCHES_PER_WORKER) -> LoaderResult:
    """Steady images per second of natkit's and torchvision's loaders on generated JPEG folders,
    ``passes`` times each, and each loader's efficiency against its one-core rate."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elapsed = stopwatch()
    rows, index, one_core = [], {}, {}
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
            one_core[kind] = one_core_rates(root, size)
            for w in workers:
                settings = [("natkit", lambda r, w=w: natkit_speed(
                                r, w, batch_size, size, device, per_worker=per_worker)),
                            ("torchvision", lambda r, w=w: torchvision_speed(
                                r, w, batch_size, size, device, per_worker=per_worker))]
                if device.type == "cuda":
                    settings.append(("natkit gpu decode", lambda r, w=w: natkit_speed(
                        r, w, batch_size, size, device, decode="gpu", per_worker=per_worker)))
                for name, measure in settings:
                    speeds = [measure(root) for _ in range(passes)]
                    rate = median(speeds)
                    # the GPU decode's one-core rate is the CPU decoding it replaces
                    base = one_core[kind]["natkit" if name.startswith("natkit") else name]
                    rows.append(LoaderTiming(kind, name, w, tuple(speeds), rate,
                                             efficiency(rate, w, base),
                                             timed_batches(w, per_worker)))
                    typer.echo(f"{kind:9s} workers {w:2d}  {name:18s} {rate:8.1f} img/s  "
                               f"efficiency {efficiency(rate, w, base):.2f}", err=True)
    return LoaderResult(machine(), str(device), counts, {k: list(FOLDERS[k]) for k in counts},
                        batch_size, passes, size, index, tuple(rows), elapsed(), one_core)


def loader_markdown(result: LoaderResult, notes: str = "") -> str:
    """The loader benchmark as a markdown section."""
    m = result.machine
    steady = any(r.timed_batches for r in result.rows)
    timing = (f"steady state: after {WARMUP_PER_WORKER} untimed batches per worker, "
              f"{BATCHES_PER_WORKER} timed batches per worker (with 0 workers, as many as with "
              f"1), the median of {result.passes} such stream(s)" if steady else
              f"median of {result.passes} shuffled passes after a warm-up")
    lines = ["#### Loader: natkit's image-folder loader against torchvision's ImageFolder", "",
             f"{m.cores} cores ({m.cpu}), device {result.device}"
             f"{' (' + m.cuda + ')' if m.cuda else ''}; batch {result.batch_size}, "
             f"images loaded at {result.image_size} px; {timing}; persistent workers for both. "
             "torchvision: Resize + CenterCrop + ToTensor (float on the host); natkit: "
             "draft-mode JPEG decoding, the central square resized, "
             + ("uint8 batches (pinned) made float on the device." if result.device != "cpu"
                else "floats made by the workers (by the main process with 0 workers)."), ""]
    if result.one_core:
        lines += ["Efficiency: a loader's images/s over (workers x its one-core rate: the same "
                  "decoding, image by image on one thread in this process, measured in the same "
                  "run); 1.00 means every worker decodes at the one-core pace. One-core rates: "
                  + "; ".join(f"{folder} " + ", ".join(f"{name} {rate:,.0f} img/s"
                                                      for name, rate in rates.items())
                              for folder, rates in result.one_core.items()) + ".", ""]
    loaders = list(dict.fromkeys(r.loader for r in result.rows))
    header = ["folder", "workers", *[f"{name} img/s" for name in loaders],
              *[f"{name} / torchvision" for name in loaders if name != "torchvision"]]
    if result.one_core:
        header += [f"{name} efficiency" for name in loaders]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(dict.fromkeys((r.folder, r.workers) for r in result.rows))
    for folder, w in keys:
        row = {r.loader: r for r in result.rows if (r.folder, r.workers) == (folder, w)}
        speed = {name: r.median_images_per_s for name, r in row.items()}
        size = "x".join(map(str, result.sizes[folder]))
        cells = [f"{folder} ({result.counts[folder]} of ~{size})", str(w),
                 *[f"{speed[n]:,.0f}" if n in speed else "-" for n in loaders],
                 *[f"{speed[n] / speed['torchvision']:.2f}x" if n in speed else "-"
                   for n in loaders if n != "torchvision"]]
        if result.one_core:
            cells += [f"{row[n].efficiency:.2f}" if n in row and row[n].efficiency is not None
                      else "-" for n in loaders]
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
    passes: Annotated[int, typer.Option(min=1, help="Timed streams per setting (the median is "
                                                    "reported).")] = 1,
    batches_per_worker: Annotated[int, typer.Option(
        min=1, help="Batches timed per worker, in steady state.")] = BATCHES_PER_WORKER,
    notes: Annotated[str, typer.Option(help="A line added under the table.")] = "",
    out: Annotated[Path, typer.Option(help="Folder for loader.md and loader.json.")]
    = Path("benchmarks/results/tiny"),
) -> None:
    """Time natkit's image-folder loader against torchvision's on generated JPEG folders."""
    counts = {k: v for k, v in (("imagenet", imagenet), ("large", large)) if v > 0}
    result = loader_speed(workers, counts, batch_size, passes, per_worker=batches_per_worker)
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
