"""Files natkit writes where the user points it: the system's refusals as one line naming the option.

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
from natkit.files import describe_os_error

# Errors of a write that name no file, which can only come from the file being written.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


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
    return OutputError(f"{option}: cannot write '{path}': {describe_os_error(exc)}", option=option)


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
        if exc.option == option:
            raise
        raise OutputError(f"{option}: {exc}", option=option) from None


def check_output_file(out: Path, force: bool, option: str = "--out",
                      companions: dict[Path, str] | None = None) -> list[Path]:
    """Refuse a directory, and an existing file unless ``force``; returns ``out``, its ``.json``
    description and the ``companions`` (each path with what it is, for the message)."""
    out = Path(out)
    described = {out: "", out.with_name(out.name + ".json"):
                 " (the description written beside the weights)"}
    described.update({Path(path): f" ({what})" for path, what in (companions or {}).items()})
    files = list(described)
    with output_errors(option, *files):
        if out.is_dir():
            raise OutputError(f"{option}: '{out}' is a directory; give the file to write, "
                              f"e.g. {out / 'backbone.pt'}", option=option)
        for path, what in described.items():
            if path.is_dir():
                raise OutputError(f"{option}: '{path}' is a directory", option=option)
            if not force and (path.exists() or path.is_symlink()):
                raise OutputError(f"{option}: '{path}' already exists{what}; use --force to "
                                  "overwrite it", option=option)
    return files
