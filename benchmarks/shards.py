"""Shards against the JPEG folder: one process's decode rate, the bytes, the JPEG round trip.

``python -m benchmarks.shards --count 500`` writes a seeded folder of ImageNet-like
JPEGs (about 500 x 375, :func:`benchmarks.loader.write_jpeg_folder`), writes it as
shards at 256 px (JPEG and raw), and measures, in this process on one thread, the
images per second of ``raw_item`` (what a loader worker does for one image) for:
``imagefolder`` (decode + resize of the original), shard JPEG records (decode only)
and raw shard records (a slice of the memory map). Every pass reads every training
image in a seeded random order, as natkit's batches do, after one untimed pass that
brings the files into the page cache. It also reports the pixel difference between
the JPEG records and the pixels ``imagefolder`` gives (``load_image`` at 256).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from benchmarks.loader import write_jpeg_folder


def rate(dataset: Any, passes: int, seed: int = 0) -> float:
    """Median images/s of ``dataset.raw_item`` over ``passes`` seeded random orders."""
    rng = np.random.default_rng(seed)
    for i in range(len(dataset)):  # untimed: the files into the page cache
        dataset.raw_item(i)
    rates = []
    for _ in range(passes):
        order = rng.permutation(len(dataset))
        start = time.perf_counter()
        for i in order:
            dataset.raw_item(int(i))
        rates.append(len(order) / (time.perf_counter() - start))
    return float(np.median(rates))


def measure(root: Path, size: int, passes: int) -> dict[str, Any]:
    """Write ``root`` as shards and time the three readers."""
    from natkit.datasets import imagefolder, shards
    from natkit.datasets.shard_writer import write_shards

    folder = imagefolder.create(root=str(root), image_size=size, cache=False)
    result: dict[str, Any] = {"images": len(folder), "size": size, "passes": passes,
                              "rates": {}, "bytes_per_image": {}, "write_images_per_s": {}}
    result["rates"]["imagefolder (JPEG decode + resize)"] = rate(folder, passes)
    for encoding in ("jpeg", "raw"):
        out = root.parent / f"shards-{encoding}"
        written = write_shards(root, out, size=size, encoding=encoding, workers=0)
        total = sum(s.images for s in written.splits)
        result["write_images_per_s"][encoding] = total / written.seconds
        ds = shards.create(root=str(out), cache=False)
        result["bytes_per_image"][encoding] = written.splits[0].bytes / written.splits[0].images
        result["rates"][f"shards, {encoding}"] = rate(ds, passes)
        if encoding == "jpeg":
            diff = torch.stack([(ds.raw_item(i).int() - folder.raw_item(i).int()).abs()
                                for i in range(len(ds))]).float()
            result["jpeg_difference"] = {"mean": float(diff.mean()), "max": float(diff.max())}
    result["bytes_per_image"]["source JPEG"] = float(np.mean(
        [folder.path(i).stat().st_size for i in range(len(folder))]))
    return result


def main(
    count: Annotated[int, typer.Option(help="JPEGs in the generated folder.")] = 500,
    size: Annotated[int, typer.Option(help="The shards' side (the paper preset's 256).")] = 256,
    passes: Annotated[int, typer.Option(help="Timed passes over the training split.")] = 3,
    out: Annotated[Path | None, typer.Option(help="Write the results here as JSON.")] = None,
) -> None:
    """Time one process reading shards against decoding the JPEG folder."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpeg_folder(Path(tmp) / "photos", count, (500, 375))
        result = measure(root, size, passes)
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text + "\n")
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
