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
import warnings
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
    except (OSError, ValueError):  # ValueError: a name with a NUL byte
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


class IndexCacheWarning(UserWarning):
    """A cached folder index did not validate; natkit rebuilt it from the folder."""


def _read(path: Path, root: Path) -> FolderIndex | None:
    """The cached index of ``root`` if it is valid and every directory kept its mtime.

    The cache is an input like any other file: one that does not validate is
    rebuilt, with a warning, and nothing it names outside ``root`` is ever opened.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        return _invalid(path, root, f"unreadable: {type(exc).__name__}")
    why = _problem(data, root)
    if why is not None:
        return _invalid(path, root, why)
    if (data["version"] != INDEX_VERSION or data["root"] != str(root) or data["key"] != _key()
            or any(_mtime(root / rel) != mtime for rel, mtime in data["dirs"].items())):
        return None  # another version, folder or setting, or the folder changed: rebuild
    classes = [(name, list(files)) for name, files in data["classes"]]
    skipped = [(rel, why) for rel, why in data["skipped"]]
    return FolderIndex(root, classes, skipped, cached=True)


def _invalid(path: Path, root: Path, why: str) -> None:
    warnings.warn(f"the index cache '{path}' of '{root}' is not valid ({why}); rebuilding it "
                  "from the folder", IndexCacheWarning, stacklevel=4)
    return None


def _relative(text: Any) -> bool:
    """A relative POSIX path inside the folder: no absolute path, no '..', no empty part."""
    if not isinstance(text, str) or not text or text.startswith("/") or "\0" in text:
        return False
    return all(part not in ("", ".", "..") for part in text.split("/"))


def _problem(data: Any, root: Path) -> str | None:
    """What is wrong with a cached index's structure, or None when it is sound."""
    if not isinstance(data, dict):
        return "not a mapping"
    missing = {"version", "root", "key", "dirs", "classes", "skipped"} - data.keys()
    if missing:
        return f"no '{sorted(missing)[0]}'"
    dirs, classes, skipped = data["dirs"], data["classes"], data["skipped"]
    if not isinstance(dirs, dict) or "." not in dirs:
        return "'dirs' must map the folder and its subfolders to their times"
    if any(not (rel == "." or _relative(rel)) or not (t is None or type(t) is int)
           for rel, t in dirs.items()):
        return "'dirs' names a folder outside the root, or a time that is not an integer"
    if not isinstance(classes, list) or not classes:
        return "'classes' must be a non-empty list"
    listed: set[str] = set()
    for entry in classes:
        if not (isinstance(entry, list) and len(entry) == 2 and _relative(entry[0])
                and "/" not in entry[0] and isinstance(entry[1], list) and entry[1]):
            return "each class must be [name, [files]] with a plain name and files"
        name, files = entry
        if name not in dirs:  # else its files could change without the cache noticing
            return f"class '{name[:40]}' has no folder time in 'dirs'"
        for rel in files:
            if not (_relative(rel) and rel.startswith(f"{name}/")
                    and Path(rel).suffix.lower() in IMAGE_EXTENSIONS):
                return f"class '{name[:40]}' lists a file outside its folder, or not an image"
        listed.update(files)
    if not isinstance(skipped, list) or any(
            not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                 and e[0] in listed and isinstance(e[1], str))
            for e in skipped):
        return "'skipped' must list [file, reason] pairs of listed files"
    return None


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write the index atomically: readers see the old one or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, separators=(",", ":")))
    except (OSError, OutputError):
        pass  # a read-only cache only costs the next construction another scan
