"""Write an image folder as shards (``natkit shards``): every image resized once, written atomically.

The splits, their files, labels and class order are ``imagefolder``'s on the
same folder (train/test trees, or the seeded stratified held-out fraction). Each
image goes through :func:`~natkit.datasets.images.load_image` at ``size`` (the
pixels ``imagefolder`` gives at ``image_size: size``) and is stored as a JPEG
of ``quality`` without chroma subsampling, or as raw uint8 pixels. Files that
cannot be read are skipped with a warning, counted, and listed in the manifest.

Everything is written into a hidden temporary folder beside ``out`` and renamed
to ``out`` once complete, so an interrupted write never leaves a folder that
reads as finished; the next write to the same ``out`` removes what a killed one
left. The records come out the same whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import multiprocessing
import os
import shutil
import signal
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from natkit.datasets import imagefolder
from natkit.datasets.images import UNREADABLE, ImageReadWarning, load_image
from natkit.datasets.shards import ENCODINGS, FORMAT, MANIFEST, SPLITS, VERSION, data_name, index_name
from natkit.errors import ConfigError, DataError, Interrupted, OutputError, clip
from natkit.files import describe_os_error, temporary_path
from natkit.signals import Terminated, terminate_as_interrupt
from natkit.values import MAX_IMAGE_SIZE, Bounds, coerce
from natkit.version import __version__

SUBSAMPLING = "4:4:4"  # no chroma subsampling: colour edges survive (measured in docs/reproduce.md)
_PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}


@dataclass
class SplitWritten:
    """One split as written: its records, the files left out, and the bytes."""

    split: str
    images: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file relative to SRC, why)


@dataclass
class ShardsWritten:
    """What :func:`write_shards` wrote."""

    out: Path
    encoding: str
    size: int
    seconds: float
    splits: list[SplitWritten]


def encode(rel: str, *, root: str, size: int, encoding: str, quality: int) -> tuple[bytes, str | None]:
    """The record of the image ``root/rel`` and its problem: ``(b"", why)`` when it cannot be read."""
    try:
        pixels = load_image(Path(root) / rel, size)
    except UNREADABLE as exc:
        return b"", f"{type(exc).__name__}: {exc}"
    if encoding == "raw":
        return pixels.numpy().tobytes(), None
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy().transpose(1, 2, 0)).save(
        buffer, "JPEG", quality=quality, subsampling=_PIL_SUBSAMPLING[SUBSAMPLING])
    return buffer.getvalue(), None


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    # a forked worker inherits the main process's SIGTERM handler; the pool stops its
    # workers by SIGTERM, which must end them quietly
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _mapper(workers: int) -> Iterator[Callable[[Callable[[str], Any], Iterable[str]], Iterator[Any]]]:
    """``map`` in order: in this process, or over ``workers`` processes."""
    if workers == 0:
        yield map
        return
    pool = multiprocessing.get_context().Pool(workers, initializer=_ignore_interrupts)
    try:
        yield functools.partial(pool.imap, chunksize=8)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _checked(source: Path, out: Path, size: int, quality: int, encoding: str, workers: int,
             test_fraction: float) -> None:
    """One ConfigError line naming the argument for a value that cannot be written."""
    coerce(size, int, "--size", Bounds(ge=8, le=MAX_IMAGE_SIZE))
    coerce(quality, int, "--quality", Bounds(ge=1, le=100))
    coerce(workers, int, "--workers", Bounds(ge=0, le=1024))
    coerce(test_fraction, float, "--test-fraction", Bounds(gt=0.0, lt=1.0))
    if encoding not in ENCODINGS:
        raise ConfigError(f"--encoding: expected one of {', '.join(ENCODINGS)}, got "
                          f"'{clip(encoding)}'")
    if not source.is_dir():
        raise DataError(f"SRC: '{source}' is not a directory (expected SRC/<class>/<image>)")
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise ConfigError(f"OUT_DIR: '{out}' is inside SRC '{source}', where it would be read as "
                          "a class folder; write the shards elsewhere")
    if dst in src.parents:  # replacing OUT_DIR would delete the images being read
        raise ConfigError(f"SRC: '{source}' is inside OUT_DIR '{out}'; write the shards to a "
                          "folder that does not hold the images")


def _check_replaceable(out: Path, force: bool) -> None:
    """Refuse to replace anything but a shards folder (with --force) or an empty folder."""
    if not os.path.lexists(out):
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not (out.is_dir() and not out.is_symlink() and (out / MANIFEST).is_file()):
        raise OutputError(f"OUT_DIR: '{out}' exists and is not a folder natkit shards wrote; it is "
                          "kept, even with --force: choose another OUT_DIR")
    if not force:
        raise OutputError(f"OUT_DIR: '{out}' already holds shards; give --force to replace them")
    others = sorted(p.name for p in out.iterdir() if not _shard_file(p.name))
    if others:  # --force replaces shards, never what a user put beside them
        raise OutputError(f"OUT_DIR: '{out}' holds shards and other files ('{others[0]}', ...); "
                          "they are kept, even with --force: choose another OUT_DIR")


def _shard_file(name: str) -> bool:
    """Whether ``name`` is a file a shards folder holds (its manifest, records and indexes)."""
    return name == MANIFEST or name.endswith((".bin", ".index.npz"))


def _remove_unfinished(out: Path, say: Callable[[str], None]) -> None:
    """Delete the temporary folders that killed writes to ``out`` left (their process is gone)."""
    stem = temporary_path(out).name.rsplit(".tmp-", 1)[0]
    for kind in (".tmp-", ".old-"):
        for stale in out.parent.glob(f"{stem}{kind}*"):
            pid = stale.name[len(stem) + len(kind):].split("-")[0]
            if not pid.isdigit() or _alive(int(pid)) or not stale.is_dir() or stale.is_symlink():
                continue
            shutil.rmtree(stale, ignore_errors=True)
            say(f"removed '{stale}', left by an interrupted write")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def _datasets(source: Path, size: int, test_fraction: float, seed: int) -> dict[str, Any]:
    """imagefolder's two splits of ``source`` (nothing decoded); its errors name SRC."""
    try:
        return {split: imagefolder.create(split=split, root=str(source), image_size=size,
                                          test_fraction=test_fraction, seed=seed, cache=False)
                for split in SPLITS}
    except DataError as exc:
        raise DataError(f"SRC: {str(exc).removeprefix('data.root: ')}") from None


def _relative(path: Path, source: Path) -> str:
    """``path`` relative to ``source``; through '..' when a tree of it is a symbolic link
    (imagefolder's files then lie where the link points)."""
    return Path(os.path.relpath(path, source)).as_posix()


def _write_split(folder: Path, source: Path, split: str, dataset: Any, job: Callable[[str], Any],
                 mapper: Callable[..., Iterator[Any]], advance: Callable[[], None]) -> SplitWritten:
    """Write one split's records and index into ``folder``; paths are relative to ``source``."""
    written = SplitWritten(split, skipped=[(_relative(p, source), why)
                                           for p, why in dataset.skipped])
    rels = [_relative(p, source) for p in dataset.files]
    offsets, labels, crcs, kept = [0], [], [], []
    with open(folder / data_name(split), "wb") as f:
        for i, (record, why) in enumerate(mapper(job, rels)):
            advance()
            if why is not None:
                warnings.warn(f"skipping unreadable image '{source / rels[i]}': {why}",
                              ImageReadWarning, stacklevel=2)
                written.skipped.append((rels[i], why))
                continue
            f.write(record)
            offsets.append(offsets[-1] + len(record))
            labels.append(int(dataset.labels[i]))
            crcs.append(zlib.crc32(record))
            kept.append(os.fsencode(rels[i]))
        f.flush()
        os.fsync(f.fileno())
    if not kept:
        raise DataError(f"SRC: none of the {len(rels)} images of the {split} split could be read "
                        f"(first: '{written.skipped[0][0]}': {written.skipped[0][1]})")
    with open(folder / index_name(split), "wb") as f:
        np.savez(f, offsets=np.array(offsets, dtype=np.int64), labels=np.array(labels, dtype=np.int64),
                 crc32=np.array(crcs, dtype=np.uint32), paths=np.array(kept, dtype=np.bytes_))
        f.flush()
        os.fsync(f.fileno())
    written.images, written.bytes = len(kept), offsets[-1]
    return written


def _manifest(source: Path, datasets: dict[str, Any], splits: list[SplitWritten], *, size: int,
              encoding: str, quality: int, test_fraction: float, seed: int) -> dict[str, Any]:
    trees = datasets["train"].root != source  # imagefolder read SRC/train and SRC/test (or val)
    return {
        "format": FORMAT, "version": VERSION, "encoding": encoding, "size": size,
        "jpeg": {"quality": quality, "subsampling": SUBSAMPLING} if encoding == "jpeg" else None,
        "resize": "natkit load_image: shorter side to size (JPEG draft decoding where the file is "
                  "at least twice as large), centre square, bilinear with antialiasing",
        "classes": list(datasets["train"].classes),
        "source": str(source),
        "split": {"layout": "train/test trees" if trees else "held-out fraction",
                  **({} if trees else {"test_fraction": test_fraction, "seed": seed})},
        "splits": {s.split: {"images": s.images, "bytes": s.bytes,
                             "skipped": [list(pair) for pair in s.skipped]} for s in splits},
        "written_by": {"natkit": __version__, "pillow": PIL.__version__},
    }


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


def write_shards(source: Path, out: Path, *, size: int = 256, quality: int = 95,
                 encoding: str = "jpeg", workers: int = 0, test_fraction: float = 0.2,
                 seed: int = 0, force: bool = False, console: Console | None = None) -> ShardsWritten:
    """Write ``source``'s train and test splits as shards in ``out`` (see the module's text)."""
    source, out = Path(source).expanduser(), Path(out).expanduser()
    _checked(source, out, size, quality, encoding, workers, test_fraction)
    _check_replaceable(out, force)
    console = console or Console(stderr=True)
    _remove_unfinished(out, lambda line: console.print(line, soft_wrap=True, highlight=False,
                                                       markup=False))
    datasets = _datasets(source, size, test_fraction, seed)
    source = source.resolve()  # as imagefolder's index: the records' paths are relative to it
    job = functools.partial(encode, root=str(source), size=size, encoding=encoding,
                            quality=quality)
    tmp = temporary_path(out)
    start = time.perf_counter()
    try:
        tmp.mkdir(parents=True)
        # SIGTERM (a cluster's time limit) cleans up as Ctrl-C does: the folder may be 100s of GB
        with terminate_as_interrupt(), _mapper(workers) as mapper, _progress(console) as bar:
            task = bar.add_task(f"shards of {source.name}",
                                total=sum(len(d) for d in datasets.values()))
            splits = [_write_split(tmp, source, split, datasets[split], job, mapper,
                                   lambda: bar.advance(task)) for split in SPLITS]
        manifest = _manifest(source, datasets, splits, size=size, encoding=encoding,
                             quality=quality, test_fraction=test_fraction, seed=seed)
        with open(tmp / MANIFEST, "w") as f:
            f.write(json.dumps(manifest, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _move_into_place(tmp, out)
    except KeyboardInterrupt as stop:
        cause = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        interrupted = Interrupted(f"{cause}: no shards were written; '{out}' is as it was")
        interrupted.exit_code = 143 if isinstance(stop, Terminated) else 130
        raise interrupted from None
    except OSError as exc:
        raise OutputError(f"OUT_DIR: cannot write '{exc.filename or tmp}': "
                          f"{describe_os_error(exc)}; '{out}' is as it was") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ShardsWritten(out, encoding, size, time.perf_counter() - start, splits)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``, replacing an older one (by two renames)."""
    old = None
    if os.path.lexists(out):
        old = out.with_name(temporary_path(out).name.replace(".tmp-", ".old-"))
        os.replace(out, old)
    os.replace(tmp, out)
    with contextlib.suppress(OSError):
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
