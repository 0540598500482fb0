"""Frozen features on disk: float16 files written in chunks, read back in chunks as float32.

Features of every image are too big for memory at scale (AlexNet conv5 on
ImageNet: 9,216 floats x 1.28M images, 47 GB per network in float32), so the
evaluation writes them once to a flat float16 file and every probe reads the
rows it needs, a bounded chunk at a time. Each feature is stored centred and
scaled by the statistics of the first chunk written, so float16's rounding is
relative to the feature's spread, not to its magnitude (a feature of mean 100
and spread 0.01 would otherwise lose all its signal).

Chunks are read with plain file reads, not through a memory map: pages of a
mapped file count towards the process's resident memory, and a pass over the
whole file would then hold all of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn, Protocol

import numpy as np
import torch

from natkit import files
from natkit.errors import OutputError

FLOAT16_MAX = float(np.finfo(np.float16).max)
# a run of wanted rows is read in one go when the rows between them are fewer than this
_MAX_GAP = 64
STORE_PREFIX = ".eval-features-"  # the evaluation's feature files live in <run>/.eval-features-<pid>/


class FeatureSource(Protocol):
    """Rows of features that can be read back, a few at a time, as float32."""

    dim: int

    def __len__(self) -> int: ...

    def read(self, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` (increasing) as float32 ``[len(index), dim]`` on the CPU."""
        ...


class TensorFeatures:
    """Features already in memory (small data, tests): the same interface as a store."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.detach().float().cpu()
        self.dim = int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def read(self, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` as float32 ``[len(index), dim]``."""
        return self.x[torch.from_numpy(np.asarray(index, dtype=np.int64))]


def as_source(x: torch.Tensor | FeatureSource) -> FeatureSource:
    """A feature source for ``x``: a tensor is wrapped, a store is returned as is."""
    return TensorFeatures(x) if isinstance(x, torch.Tensor) else x


class FeatureStore:
    """One split's features in a float16 file; rows are decoded as ``x * scale + shift``."""

    def __init__(self, path: Path, rows: int, dim: int, shift: torch.Tensor,
                 scale: torch.Tensor, clipped: int = 0) -> None:
        self.path, self.rows, self.dim = Path(path), rows, dim
        self.shift, self.scale, self.clipped = shift, scale, clipped

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        """Size of the file on disk."""
        return self.rows * self.dim * 2

    def _block(self, file: BinaryIO, first: int, count: int) -> np.ndarray:
        out = np.empty((count, self.dim), dtype=np.float16)
        file.seek(first * self.dim * 2)
        if file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OutputError(f"feature store '{self.path}' is shorter than its {self.rows} rows")
        return out

    def read(self, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` (increasing) as float32 ``[len(index), dim]`` on the CPU."""
        index = np.asarray(index, dtype=np.int64)
        out = torch.empty(len(index), self.dim)
        # opened per read: no handle outlives a read, so the folder can go at any time
        with open(self.path, "rb") as file:
            for start, stop in _runs(index, span=max(len(index), 1024)):
                first = int(index[start])
                block = self._block(file, first, int(index[stop - 1]) - first + 1)
                out[start:stop] = torch.from_numpy(block[index[start:stop] - first]).float()
        return out.mul_(self.scale).add_(self.shift)


def _runs(index: np.ndarray, span: int) -> Iterator[tuple[int, int]]:
    """Split increasing ``index`` into runs, each read as one block of at most ``span`` rows."""
    i = 0
    while i < len(index):
        j = int(np.searchsorted(index, index[i] + span, side="left"))
        gaps = np.flatnonzero(np.diff(index[i:j]) > _MAX_GAP)
        j = i + int(gaps[0]) + 1 if len(gaps) else j
        yield i, j
        i = j


class StoreWriter:
    """Append feature chunks to a temporary file beside ``path``; :meth:`finish` renames it in place.

    The temporary file, its flush to disk, the rename and the wording of a refusal
    are :func:`natkit.files.replacing`'s, held open from here to :meth:`finish`
    or :meth:`abort`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows, self.dim, self.clipped = 0, 0, 0
        self.shift = self.scale = None
        self._open = contextlib.ExitStack()
        (self.tmp,) = self._open.enter_context(files.replacing(self.path))
        try:
            self._file = self._open.enter_context(open(self.tmp, "wb"))  # noqa: SIM115 - the stack closes it
        except OSError as exc:
            self._fail(exc)

    def append(self, x: torch.Tensor) -> None:
        """Write a float32 chunk ``[b, dim]``."""
        x = x.detach().float().cpu()
        if self.shift is None:
            self.dim = int(x.shape[1])
            self.shift, self.scale = _encoding(x)
        encoded = (x - self.shift) / self.scale
        # a value beyond float16's range saturates (counted) instead of becoming inf
        over = encoded.abs() > FLOAT16_MAX
        if bool(over.any()):
            self.clipped += int(over.sum())
            encoded.clamp_(-FLOAT16_MAX, FLOAT16_MAX)
        try:
            self._file.write(encoded.to(torch.float16).numpy().tobytes())
        except OSError as exc:
            self._fail(exc)
        self.rows += len(x)

    def finish(self) -> FeatureStore:
        """Close the file, give it its final name and open it for reading."""
        try:
            self._open.close()
        except OutputError as exc:
            raise _write_error(exc) from None
        if self.shift is None:  # an empty split: nothing was appended
            self.shift, self.scale = torch.zeros(0), torch.ones(0)
        return FeatureStore(self.path, self.rows, self.dim, self.shift, self.scale, self.clipped)

    def abort(self) -> None:
        """Close and delete the unfinished file (nothing once finished or aborted)."""
        # an exception is what tells replacing not to rename; this one is for it alone. A
        # failure to close is not told: abort runs while another error is on its way out.
        with contextlib.suppress(OutputError):
            self._open.__exit__(_Aborted, _Aborted(), None)

    def _fail(self, exc: OSError) -> NoReturn:
        """End the write on the system's refusal ``exc``: the temporary file goes, the error is told."""
        try:
            self._open.__exit__(type(exc), exc, exc.__traceback__)
        except OutputError as error:
            raise _write_error(error) from None
        raise exc  # not reached while replacing turns every OSError into an OutputError


class _Aborted(Exception):
    """Passed into an open write to end it without renaming anything."""


def _encoding(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature shift and scale from a first chunk: its mean and spread."""
    shift = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    positive = std[std > 0]
    # a feature (almost) constant in the first chunk gets a floor, not a tiny scale that
    # would overflow float16 when later images vary
    floor = 1e-3 * float(positive.median()) if len(positive) else 1.0
    return shift, std.clamp_min(floor)


def _write_error(error: OutputError) -> OutputError:
    return OutputError(f"eval: {error}; free space there or evaluate elsewhere")


def moments(chunks: Iterator[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and (unbiased) std of a stream of chunks, accumulated in float64."""
    count = 0
    mean = torch.zeros(dim, dtype=torch.float64)
    m2 = torch.zeros(dim, dtype=torch.float64)
    for x in chunks:
        x = x.detach().double().cpu()
        if not len(x):
            continue
        batch_mean = x.mean(dim=0)
        batch_m2 = (x - batch_mean).pow_(2).sum(dim=0)
        # Chan et al.'s pairwise update: no catastrophic cancellation of sum-of-squares
        total = count + len(x)
        delta = batch_mean - mean
        mean += delta * (len(x) / total)
        m2 += batch_m2 + delta.pow(2) * (count * len(x) / total)
        count = total
    std = (m2 / (count - 1)).sqrt() if count > 1 else torch.full((dim,), float("nan"),
                                                                  dtype=torch.float64)
    return mean, std


@contextlib.contextmanager
def store_folder(run_dir: Path | None) -> Iterator[Path]:
    """A fresh folder for the feature files, deleted on the way out (success, error or Ctrl-C).

    It is ``run_dir/.eval-features-<pid>``, or a folder of the system's temporary
    folder without a run directory.
    """
    try:
        if run_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="natkit" + STORE_PREFIX))
        else:
            _remove_orphans(Path(run_dir))
            folder = Path(run_dir) / f"{STORE_PREFIX}{os.getpid()}"
            shutil.rmtree(folder, ignore_errors=True)  # left by a killed process of this pid
            folder.mkdir()
    except OSError as exc:
        raise OutputError(f"eval: cannot create a folder for the feature files: "
                          f"{files.describe_os_error(exc)}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_orphans(run_dir: Path) -> None:
    """Delete the feature folders of evaluations killed outright (their process is gone)."""
    for folder in run_dir.glob(f"{STORE_PREFIX}*"):
        pid = folder.name.removeprefix(STORE_PREFIX)
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # alive, owned by another user
