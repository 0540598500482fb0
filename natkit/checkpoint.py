"""A run directory's files: their names, checkpoints saved atomically and loaded safely."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from natkit import files
from natkit.errors import CheckpointError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
SNAPSHOTS = "snapshots"  # train.keep_every's checkpoints: snapshots/epoch-0010.pt


def save_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts only) atomically to each path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        files.write_bytes(path, buffer.getvalue())


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
    except pickle.UnpicklingError:
        found = _foreign_global(path)
        raise CheckpointError(
            f"checkpoint '{path}' was refused: it holds pickled objects, not just tensors "
            f"and plain data{f' ({found[:160]})' if found else ''}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no detail'})"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint '{path}' is not a natkit checkpoint (no 'model' entry)")
    return state


# Where the classes and functions of a plain checkpoint come from: tensors and containers.
_PLAIN_MODULES = frozenset({"torch", "collections", "builtins", "_codecs"})
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


def _foreign_global(path: Path) -> str | None:
    """The first class or function a checkpoint's pickle names outside torch and the containers.

    Read from the pickle's opcodes, which name what loading it would import; nothing
    in the file is run. None when the file cannot be read so.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                return None
            data = archive.read(member)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in _STRING_OPS:
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "STACK_GLOBAL"):
                module, name = (str(arg).split(" ", 1) if op.name == "GLOBAL"
                                else (strings[-2], strings[-1]))
                if module.split(".")[0] not in _PLAIN_MODULES:
                    return f"{module}.{name}"
    except (OSError, ValueError, IndexError, zipfile.BadZipFile, pickle.UnpicklingError):
        return None
    return None


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


def non_finite_tensor(*modules: torch.nn.Module | None) -> str | None:
    """The name of the first floating tensor of ``modules`` holding NaN or inf, or None."""
    for module in modules:
        if module is not None:
            bad = first_non_finite(module.state_dict())
            if bad is not None:
                return bad[0]
    return None


def checkpoint_paths(run_dir: Path, epoch: int, checkpoint: bool = True,
                     snapshot: bool = False) -> list[Path]:
    """Where a checkpoint taken after ``epoch`` goes: checkpoint.pt and/or its snapshot."""
    paths = [Path(run_dir) / CHECKPOINT] if checkpoint else []
    if snapshot:
        paths.append(snapshot_path(run_dir, epoch))
        paths[-1].parent.mkdir(exist_ok=True)
    return paths


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


def _non_finite_entry(value: Any, where: str = "") -> str | None:
    """The dotted name of the first floating tensor holding NaN or inf in nested state, or None."""
    if isinstance(value, torch.Tensor):
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return None if finite else where
    items = (value.items() if isinstance(value, Mapping)
             else enumerate(value) if isinstance(value, (list, tuple)) else ())
    for key, item in items:
        found = _non_finite_entry(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def state_mismatch(module: torch.nn.Module, state: Mapping[str, Any]) -> str | None:
    """What keeps ``state`` from loading into ``module``: a missing, unexpected or misshapen key.

    Checked on the keys and shapes themselves, before ``load_state_dict``, so the
    message names the first key that differs; None when the state fits.
    """
    if not isinstance(state, Mapping):
        return f"expected a mapping of tensors, got {type(state).__name__}"
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        return f"missing key '{missing[0]}'" + (f" (and {len(missing) - 1} more)"
                                                if len(missing) > 1 else "")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        return f"unexpected key '{str(unexpected[0])[:80]}'" + (
            f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
    for key, tensor in expected.items():
        given = state[key]
        if not isinstance(given, torch.Tensor):
            return f"'{key}' is a {type(given).__name__}, not a tensor"
        if given.shape != tensor.shape:
            return (f"'{key}' has shape {tuple(given.shape)}; this config's network has "
                    f"{tuple(tensor.shape)}")
    return None


# ---------------------------------------------------------------- a training run's state

CHECKPOINT_FORMAT = 2  # 2: the method's state replaces format 1's NAT-only assignment


class Checkpointable(Protocol):
    """What a checkpoint captures of a training run (natkit.engine.Run has all of it)."""

    config: Any  # natkit.schema.Config
    device: torch.device
    epoch: int
    step: int
    batch_in_epoch: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: Any  # natkit.methods.Method: state_dict() and load_state_dict()
    method_modules: torch.nn.Module | None
    augment_generator: torch.Generator


def run_state(run: Checkpointable) -> dict[str, Any]:
    """Everything the rest of a run depends on, as tensors and plain data."""
    from natkit.version import __version__

    return {
        "format": CHECKPOINT_FORMAT,
        "natkit_version": __version__,
        "config": run.config.to_dict(),
        "epoch": run.epoch,
        "step": run.step,
        "batch_in_epoch": run.batch_in_epoch,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "method": run.method.state_dict(),
        "method_modules": (run.method_modules.state_dict()
                           if run.method_modules is not None else None),
        "rng": {
            "torch": torch.get_rng_state(),
            # this rank's own GPU: every rank draws alike, so rank 0's state suits them all
            "cuda": ([torch.cuda.get_rng_state(run.device)] if run.device.type == "cuda" else []),
            "augment": run.augment_generator.get_state(),
        },
    }


def restore_run_state(run: Checkpointable, state: dict[str, Any], path: Path,
                      batches_per_epoch: int) -> None:
    """Load :func:`run_state`'s ``state`` into ``run``; CheckpointError when it does not fit."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint '{path}' has format {state.get('format')!r}; "
                              f"this natkit reads format {CHECKPOINT_FORMAT}")
    try:
        bad = _non_finite_entry({key: state.get(key)
                                 for key in ("model", "method_modules", "optimizer")})
    except RecursionError:  # a crafted file: a list that holds itself
        raise CheckpointError(f"checkpoint '{path}' nests its state too deeply to be a "
                              "natkit checkpoint") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint '{path}' holds NaN or infinite values ({bad}); a run "
                              "cannot resume from it: resume from an earlier snapshot "
                              "(train.keep_every) or start a new run")
    why = state_mismatch(run.model, state.get("model"))
    if why is None and run.method_modules is not None:
        why = state_mismatch(run.method_modules, state.get("method_modules"))
    if why is not None:
        raise CheckpointError(f"checkpoint '{path}' does not fit this run's config: {why}")
    try:
        epoch, step = int(state["epoch"]), int(state["step"])
        batch = int(state["batch_in_epoch"])
        # batch == batches_per_epoch: stopped after the last batch, before the epoch closed
        if not (0 <= batch <= batches_per_epoch and epoch >= 0
                and step == epoch * batches_per_epoch + batch):
            raise ValueError(f"its counters do not add up (epoch {epoch}, batch {batch}, step "
                             f"{step}, with {batches_per_epoch} batches an epoch)")
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        # a method's load_state_dict raises ValueError, as its interface asks
        run.method.load_state_dict(state["method"])
        if run.method_modules is not None:
            run.method_modules.load_state_dict(state["method_modules"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if run.device.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state(rng["cuda"][0], run.device)
        run.augment_generator.set_state(rng["augment"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        detail = f"{type(exc).__name__}: missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"checkpoint '{path}' does not fit this run's config: "
                              f"{' '.join(detail.split())[:200]}") from None
    run.epoch, run.step, run.batch_in_epoch = epoch, step, batch
