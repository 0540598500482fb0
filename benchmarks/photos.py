"""A generated ImageNet-like JPEG folder, written by every core.

:func:`write_photo_folder` draws the same photograph-like images as
:func:`benchmarks.loader.photograph`, but each from its own seed (``[seed, i]``),
so the folder is byte for byte the same whatever the number of processes that
write it. It is not the folder :func:`benchmarks.loader.write_jpeg_folder`
writes (one generator for all images, in order), whose results stay comparable.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np

from benchmarks.loader import photograph
from natkit.environment import usable_cores


def photo_path(root: Path, i: int, classes: int) -> Path:
    """Where image ``i`` goes: ``root/class<k>/<i>.jpg``."""
    return root / f"class{i % classes:03d}" / f"{i:06d}.jpg"


def _write_one(args: tuple[str, int, int, int, int, int, int]) -> None:
    root, i, width, height, classes, seed, quality = args
    rng = np.random.default_rng([seed, i])
    w, h = (height, width) if i % 4 == 3 else (width, height)  # some portrait ones
    jitter = rng.uniform(0.9, 1.1)
    photograph(rng, round(w * jitter), round(h * jitter)).save(
        photo_path(Path(root), i, classes), quality=quality)


def write_photo_folder(root: Path, count: int, size: tuple[int, int] = (500, 375), *,
                       classes: int = 100, seed: int = 0, quality: int = 90,
                       workers: int | None = None) -> Path:
    """``count`` JPEGs of about ``size`` (width, height) in ``classes`` folders, by ``workers`` processes."""
    root = Path(root)
    for k in range(min(classes, count)):
        (root / f"class{k:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), i, size[0], size[1], classes, seed, quality) for i in range(count)]
    workers = usable_cores() if workers is None else workers
    if workers <= 1:
        for job in jobs:
            _write_one(job)
        return root
    # fork: the workers need only numpy and PIL, and start at once
    context = multiprocessing.get_context("fork" if os.name == "posix" else None)
    with context.Pool(workers) as pool:
        for _ in pool.imap_unordered(_write_one, jobs, chunksize=max(1, count // (workers * 8))):
            pass
    return root
