"""What NAT's assignment holds at ImageNet scale: P, a cached target bank, or regenerated targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import natkit
from benchmarks.timing import median, synchronizer, timed
from natkit import builders
from natkit import config as cfg
from natkit.assignment import AssignmentState, auto_cache_limit_mb
from natkit.plugins import registry

IMAGENET_TRAIN = 1_281_167


@dataclass(frozen=True)
class MemoryRow:
    """Bytes of P and of the targets for one distribution at one dimension, and the time
    regenerating a batch of targets takes."""

    targets: str
    options: dict[str, Any]
    n: int
    dim: int
    device: str
    perm_dtype: str
    target_dtype: str
    perm_bytes: int  # what P's elements take
    perm_bytes_measured: int  # P's storage, as allocated
    bank_bytes: int
    cached_bytes: int  # P and a bank of every target
    regenerated_bytes: int  # P and one batch of targets
    regenerating: bool
    cached_under_default_limit: bool
    default_limit_mb: float
    regen_batch: int
    regen_s: float
    regen_epoch_s: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryRow:
        """The row as speed.json stored it."""
        return cls(**data)


def _targets_at(name: str, dim: int, k: int) -> Any:
    """The distribution ``name`` at ``dim``, with k components where it takes a ``k``."""
    options: dict[str, Any] = {"dim": dim, "seed": 0}
    if "k" in registry("targets").parameters(name):
        options["k"] = k
        try:
            return natkit.create_targets(name, **options)
        except ValueError:  # basis targets need k <= dim
            options["k"] = min(k, dim)
    return natkit.create_targets(name, **options)


def resolved_limit_mb(limit: float | str, device: torch.device) -> float:
    """The cache limit in MB that a ``cache_targets_mb`` value means on ``device``."""
    return auto_cache_limit_mb(device) if limit == "auto" else float(limit)


def assignment_memory(n: int = IMAGENET_TRAIN, dims: Sequence[int] = (128, 2048), k: int = 1000,
                      batch: int = 256, repeats: int = 5, device: str = "cpu") -> list[MemoryRow]:
    """Bytes of P and of a cached bank at n images, and the measured cost of regenerating targets."""
    dev = builders.pick_device(device)
    sync = synchronizer(dev)
    default_limit_mb = resolved_limit_mb(cfg.build().method["cache_targets_mb"], dev)
    rows = []
    for name in natkit.list_components("targets"):
        for dim in dims:
            targets = _targets_at(name, dim, k)
            # a cache limit of 0 MB: targets regenerated from (seed, id), as natkit does at scale
            state = AssignmentState(targets, n, generator=torch.Generator().manual_seed(0),
                                    device=dev, cache_limit_mb=0.0)
            perm = state.perm
            ids = torch.randint(n, (batch,), generator=torch.Generator().manual_seed(1))
            _, held = timed(lambda ids=ids, state=state: state.targets_of(ids), sync)  # warm-up
            regen = [timed(lambda ids=ids, state=state: state.targets_of(ids), sync)[0]
                     for _ in range(repeats)]
            bank = held.element_size() * n * dim
            perm_bytes = perm.element_size() * perm.nelement()
            rows.append(MemoryRow(
                targets=name, options=targets.options(), n=n, dim=dim, device=str(dev),
                perm_dtype=str(perm.dtype).removeprefix("torch."),
                target_dtype=str(held.dtype).removeprefix("torch."),
                perm_bytes=perm_bytes, perm_bytes_measured=perm.untyped_storage().nbytes(),
                bank_bytes=bank, cached_bytes=perm_bytes + bank,
                regenerated_bytes=perm_bytes + held.element_size() * held.nelement(),
                regenerating=not state.cached,
                cached_under_default_limit=AssignmentState.fits_cache(n, dim, default_limit_mb),
                default_limit_mb=default_limit_mb, regen_batch=batch, regen_s=median(regen),
                regen_epoch_s=median(regen) * math.ceil(n / batch)))
            del state, perm, held
    return rows
