"""The file index of an image folder, built once and cached on disk.

Listing 1.28M files and opening every header takes minutes on ImageNet, so
the result is kept in ``$NATKIT_CACHE_DIR`` (else ``$XDG_CACHE_HOME/natkit``,
else ``~/.cache/natkit``), one JSON file per folder. It is reused while every
directory of the folder keeps its modification time: adding, removing or
renaming a file changes its directory's mtime, and with it the index. A file
rewritten in place keeps the index; if it no longer decodes, loading it gives
a blank image and an :class:`~natkit.datasets.images.ImageReadWarning`.

Headers are checked once, when the index is built: files that cannot be
opened (or claim more pixels than PIL's limit) are recorded as skipped, and
each later construction warns about them again without opening anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from natkit.datasets.images import header_problem
from natkit.errors import DataError, OutputError
from natkit.files import write_text

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff",
                              ".webp"})
CACHE_ENV = "NATKIT_CACHE_DIR"
INDEX_VERSION = 1


@dataclass
class FolderIndex:
    """Class folders of ``root`` with their image files, and those whose header is unreadable."""

    root: Path
    classes: list[tuple[str, list[str]]]  # (class, every file relative to root, sorted)
    skipped: list[tuple[str, str]]  # (file relative to root, why its header is unreadable)
    cached: bool  # read from the cache, without listing or opening anything


def cache_dir() -> Path:
    """natkit's cache folder: ``$NATKIT_CACHE_DIR``, ``$XDG_CACHE_HOME/natkit`` or ``~/.cache/natkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "natkit"


def index_path(root: Path) -> Path:
    """The cache file of the folder ``root``."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "index" / f"{digest}.json"


def folder_index(root: Path, *, use_cache: bool = True) -> FolderIndex:
    """The index of ``root/<class>/...`` images: from the cache while the folder is unchanged."""
    root = root.resolve()
    path = index_path(root)
    if use_cache:
        cached = _read(path, root)
        if cached is not None:
            return cached
    index, dirs = _scan(root)
    if use_cache:
        _write(path, {"version": INDEX_VERSION, "root": str(root), "key": _key(),
                      "dirs": dirs, "classes": index.classes,
                      "skipped": index.skipped})
    return index


def _key() -> dict[str, Any]:
    """What else the index depends on: the extensions listed and PIL's pixel limit."""
    return {"extensions": sorted(IMAGE_EXTENSIONS), "max_pixels": Image.MAX_IMAGE_PIXELS}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _scan(root: Path) -> tuple[FolderIndex, dict[str, int | None]]:
    """List the class folders (and their subfolders) and check every file's header."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data.root: '{root}' holds no class folders (expected {root}/<class>/<image>)")
    dirs = {".": _mtime(root)}
    found, skipped = [], []
    for folder in classes:
        dirs[folder.name] = _mtime(folder)
        files = []
        for p in sorted(folder.rglob("*")):
            if p.is_dir():
                dirs[p.relative_to(root).as_posix()] = _mtime(p)
            elif p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                files.append(p)
        if not files:
            raise DataError(f"data.root: class folder '{folder}' holds no images "
                            f"(expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))})")
        listed = [p.relative_to(root).as_posix() for p in files]
        skipped += [(rel, why) for rel, p in zip(listed, files, strict=True)
                    if (why := header_problem(p)) is not None]
        found.append((folder.name, listed))
    return FolderIndex(root, found, skipped, cached=False), dirs


def _read(path: Path, root: Path) -> FolderIndex | None:
    """The cached index of ``root`` if it exists and every directory kept its mtime."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none yet, or unreadable: rebuild it
    try:
        if (data["version"] != INDEX_VERSION or data["root"] != str(root)
                or data["key"] != _key()):
            return None
        if any(_mtime(root / rel) != mtime for rel, mtime in data["dirs"].items()):
            return None
        classes = [(str(name), list(files)) for name, files in data["classes"]]
        skipped = [(str(rel), str(why)) for rel, why in data["skipped"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return FolderIndex(root, classes, skipped, cached=True)


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write the index atomically: readers see the old one or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, separators=(",", ":")))
    except (OSError, OutputError):
        pass  # a read-only cache only costs the next construction another scan
