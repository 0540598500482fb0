"""Files natkit writes where the user points it: refusals of the system as one line, atomic writes.

A path the system refuses (a name over 255 bytes, a read-only or unwritable
directory, /proc, a full disk) costs one line naming the option and the path;
the reason comes from the error's errno, never from its text.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from natkit.errors import OutputError

# What the system's refusal of a path means, by errno: the reason is never read from the
# exception's text.
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
# Errors of a write that name no file, which can only come from the file being written.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


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


def _related(exc: OSError, paths: tuple[Path, ...]) -> bool:
    """Whether ``exc`` is about one of ``paths``: the file, one inside it, or a directory above."""
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    if not names:
        return exc.errno in _WRITE_ERRNOS
    for path in paths:
        target = Path(os.path.abspath(path))
        for name in names:
            other = Path(os.path.abspath(os.fsdecode(name)))
            if other == target or target in other.parents or other in target.parents:
                return True
    return False


def output_error(option: str, path: Path, exc: OSError) -> OutputError:
    """One line naming the option and the path the system refused, and why."""
    return OutputError(f"{option}: cannot write '{path}': {describe_os_error(exc)}")


@contextlib.contextmanager
def output_errors(option: str, path: Path, *also: Path) -> Iterator[None]:
    """Turn the system's refusal to write at ``path`` into an OutputError naming ``option``.

    Only an OSError about ``path`` or one of ``also`` (the file, a file inside it
    or a directory above it; or a full disk, which names no file) is turned; others
    propagate. An OutputError raised inside (by natkit's atomic writes) gets
    ``option`` in front.
    """
    try:
        yield
    except OSError as exc:
        if not _related(exc, (Path(path), *map(Path, also))):
            raise
        raise output_error(option, Path(path), exc) from None
    except OutputError as exc:
        message = str(exc)
        if message.startswith(f"{option}:"):
            raise
        raise OutputError(f"{option}: {message}") from None


def check_output_file(out: Path, force: bool, option: str = "--out") -> list[Path]:
    """Refuse a directory, and an existing file unless ``force``; returns the export's two files."""
    out = Path(out)
    files = [out, out.with_name(out.name + ".json")]
    with output_errors(option, out, files[1]):
        if out.is_dir():
            raise OutputError(f"{option}: '{out}' is a directory; give the file to write, "
                              f"e.g. {out / 'backbone.pt'}")
        for i, path in enumerate(files):
            if path.is_dir():
                raise OutputError(f"{option}: '{path}' is a directory")
            if not force and (path.exists() or path.is_symlink()):
                what = "" if i == 0 else " (the description written beside the weights)"
                raise OutputError(f"{option}: '{path}' already exists{what}; use --force to "
                                  "overwrite it")
    return files


def write_files(contents: dict[Path, bytes]) -> None:
    """Write every file to a temporary file beside it, then rename each into place.

    Nothing is renamed until every file is written and flushed to disk, so a
    failure leaves all of them as they were. The temporary names are short, so a
    name near the 255-byte limit still fits.
    """
    staged: list[tuple[Path, Path]] = []
    current = None
    try:
        for i, (path, data) in enumerate(contents.items()):
            current = path
            tmp = path.with_name(f".natkit-{os.getpid()}-{i}.tmp")
            staged.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            current = path
            os.replace(tmp, path)
    except OSError as exc:  # about the file being written, not its temporary name
        raise OSError(exc.errno, exc.strerror, os.fspath(current)) from None
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    for parent in {path.parent for path in contents}:  # make the renames durable
        with contextlib.suppress(OSError):
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
