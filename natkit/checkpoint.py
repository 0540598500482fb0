"""Run files written atomically (temporary file, fsync, rename) and checkpoints loaded safely."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from natkit.errors import CheckpointError, OutputError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
SNAPSHOTS = "snapshots"  # train.keep_every's checkpoints: snapshots/epoch-0010.pt


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either its old content or all of the new.

    A write the system refuses (a full disk, a read-only or vanished directory)
    raises OutputError naming the file, and the old file is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
        kept = "the previous file is kept" if os.path.lexists(path) else "nothing was written"
        raise OutputError(f"could not write '{path}': {exc.strerror or type(exc).__name__}"
                          f"{f' ({code})' if code else ''}; {kept}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    """Atomically write a JSON file (indented, trailing newline)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts only) atomically to each path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        atomic_write_bytes(path, buffer.getvalue())


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    """Where the snapshot kept after ``epoch`` lives: ``run_dir/snapshots/epoch-0010.pt``."""
    return Path(run_dir) / SNAPSHOTS / f"epoch-{epoch:04d}.pt"


def snapshot_epochs(run_dir: Path) -> list[int]:
    """The epochs of the snapshots kept in ``run_dir``, ascending."""
    folder = Path(run_dir) / SNAPSHOTS
    if not folder.is_dir():
        return []
    epochs = []
    for path in folder.glob("epoch-*.pt"):
        number = path.stem.removeprefix("epoch-")
        if number.isdigit():
            epochs.append(int(number))
    return sorted(epochs)


def load_checkpoint(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data, never code.

    ``lazy`` maps the file instead of reading it: the counters cost no tensor reads.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        why = next((line for line in first if "GLOBAL" in line or "Unsupported" in line),
                   first[0] if first else "")
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds pickled objects, not just tensors "
            f"and plain data ({why.strip()[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no detail'})"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a natkit checkpoint (no 'model' entry)")
    return state


def first_non_finite(state: Mapping[str, Any]) -> tuple[str, int, int, bool] | None:
    """The first floating tensor holding NaN or inf, in state order.

    Returns ``(name, bad values, values, has NaN)``, or None when every value is
    finite. Integer tensors (e.g. BatchNorm's ``num_batches_tracked``) cannot be.
    """
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            return name, int((~finite).sum()), tensor.numel(), bool(torch.isnan(tensor).any())
    return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, skipping a torn last line."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return records
