"""Checks on a checkpoint's model state before it is evaluated or exported."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from natkit.checkpoint import first_non_finite, state_mismatch
from natkit.errors import CheckpointError


def require_finite(model_state: Mapping[str, Any], path: Path, what: str) -> None:
    """Refuse a checkpoint whose weights or BatchNorm statistics hold NaN or inf.

    Such a network computes NaN features, and a probe on them would report
    chance accuracy as if it were a result. ``what`` is the refused action,
    e.g. 'evaluated' or 'exported'.
    """
    bad = first_non_finite(model_state)
    if bad is None:
        return
    name, count, total, nan = bad
    kind = "NaN" if nan else "infinite"
    raise CheckpointError(
        f"checkpoint '{path}' holds {kind} values in '{name}' ({count} of {total}), the first "
        f"non-finite tensor; it cannot be {what}: the run diverged before this checkpoint was "
        "written; train it again from an earlier checkpoint or with a lower train.lr")


def require_fit(network: torch.nn.Module, model_state: Mapping[str, Any],
                path: Path | None) -> None:
    """Refuse a model state whose keys or shapes do not fit ``network``, naming the first.

    ``path`` is the checkpoint the state comes from (None: a state given directly).
    """
    why = state_mismatch(network, model_state)
    if why is not None:
        source = f"checkpoint '{path}'" if path is not None else "the model state"
        raise CheckpointError(f"{source} does not fit the run's config: {why}")
