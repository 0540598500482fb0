"""natkit's one atomic writer: a file, or several together, holds its old content or all of the new.

Every file natkit writes into a run directory or beside the user's data goes
through :func:`replacing`: the new content is written to a temporary name in
the same directory, flushed to disk, and renamed over the old file only once
every file of the write is complete. A kill at any moment leaves either the old
files or all the new ones, plus at most a temporary file that
:func:`remove_temporaries` deletes. The system's refusals (a full disk, a
read-only directory) become one :class:`~natkit.errors.OutputError` line naming
the file, and the reason comes from the error's errno, never from its text.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from natkit.errors import OutputError

# A temporary name keeps at most this much of the file's name, so that a file whose name is
# near the 255-byte limit still has one.
_NAME_KEPT = 64

# What the system's refusal of a path means, by errno.
_REASONS = {
    errno.ENAMETOOLONG: "the path or a name in it is too long",
    errno.EACCES: "permission denied",
    errno.EPERM: "the system does not allow it",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space is left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would be too large",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EEXIST: "a part of the path exists and is not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "a directory on the path is missing and cannot be created there",
    errno.ELOOP: "the path has too many symbolic links",
    errno.EIO: "an input/output error of the device",
}


def _too_long_name(path: Path) -> str:
    """The first name in ``path`` over the file system's limit, described; '' if none is."""
    limit = 255
    with contextlib.suppress(OSError, ValueError):
        anchor = next((p for p in (path, *path.parents) if os.path.isdir(p)), Path("."))
        limit = os.pathconf(anchor, "PC_NAME_MAX")
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > limit:
            return f"the name '{part[:24]}...' is {size} bytes; the limit is {limit}"
    return ""


def describe_os_error(exc: OSError) -> str:
    """Why the system refused, from the error's errno."""
    reason = _REASONS.get(exc.errno or 0) or (os.strerror(exc.errno) if exc.errno
                                               else type(exc).__name__)
    if exc.errno == errno.ENAMETOOLONG:
        details = [_too_long_name(Path(os.fsdecode(name)))
                   for name in (exc.filename, exc.filename2) if name is not None]
        reason = next((d for d in details if d), reason)
    return reason


def temporary_path(path: Path, i: int = 0) -> Path:
    """The temporary name ``path``'s new content is written under before the rename."""
    path = Path(path)
    return path.with_name(f".{path.name[:_NAME_KEPT]}.tmp-{os.getpid()}-{i}")


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files a killed write left in ``directory``; returns them."""
    removed = []
    for stale in Path(directory).glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed


def _sync_directory(directory: Path) -> None:
    """Make the renames into ``directory`` durable (where the system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(*paths: Path) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths`` to write; on a clean exit each replaces its path.

    Nothing is renamed until the block has finished and every temporary file is
    flushed to disk, so a failure while writing leaves all of ``paths`` as they
    were and no temporary file behind. Each rename is atomic; the renames of
    several files are not one, so a system that fails between two renames in one
    directory (which a full disk does not cause) leaves the first file new. A
    refusal of the system raises OutputError naming the file and saying whether
    its previous content is kept.
    """
    targets = [Path(p) for p in paths]
    staged = [temporary_path(p, i) for i, p in enumerate(targets)]
    current = targets[0] if targets else None
    try:
        yield staged
        for tmp, path in zip(staged, targets, strict=True):
            current = path
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(staged, targets, strict=True):
            current = path
            os.replace(tmp, path)
    except OSError as exc:
        raise _refused(current, exc) from None
    finally:
        for tmp in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    for parent in dict.fromkeys(path.parent for path in targets):
        _sync_directory(parent)


def _refused(path: Path | None, exc: OSError) -> OutputError:
    kept = ("the previous file is kept" if path is not None and os.path.lexists(path)
            else "nothing was written")
    return OutputError(f"cannot write '{path}': {describe_os_error(exc)}; {kept}")


def write_files(contents: Mapping[Path, bytes | str]) -> None:
    """Write several files together: all of them are replaced, or none is."""
    with replacing(*contents) as staged:
        for tmp, data in zip(staged, contents.values(), strict=True):
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write one file."""
    write_files({Path(path): data})


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    write_files({Path(path): text})


def write_json(path: Path, data: Any) -> None:
    """Atomically write a JSON file (indented, trailing newline)."""
    write_text(path, json.dumps(data, indent=2) + "\n")
