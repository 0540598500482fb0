"""What an experiment tracker logs of a run: its records and results as named scalars.

For logger plugins (``plugins/natkit-tensorboard``, ``plugins/natkit-wandb``, and yours):
scalars are named ``SECTION/KEY``: ``train/`` for a logging step's record (``train/loss``,
``train/lr``, ``train/images_per_s``), ``reassign/`` for what the method reports when it
reassigns (NAT: ``reassign/changed``, ``reassign/cost_before``, ``reassign/cost_after``),
``epoch/`` for an epoch's summary (``epoch/loss``, ``epoch/changed``, ``epoch/seconds``, ...)
and ``probe/`` for results.json's leaves (``probe/linear/trained``); ``plots/`` names the
evaluation's pictures. Keys that only place a record (``kind``, ``epoch``, ``step``,
``world_size``) and values that are not numbers (``changed`` of an epoch without
reassignment is None) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

TRAIN, REASSIGN, EPOCH, PROBE, PLOTS = "train", "reassign", "epoch", "probe", "plots"

# keys that say where a record belongs, not what was measured
PLACE_KEYS = frozenset({"kind", "epoch", "step", "world_size"})


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (a bool is not a measurement)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """The leaves of nested mappings under their joined keys: ``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def numbers(record: Mapping[str, Any], section: str) -> dict[str, float]:
    """A metrics record's numeric values (nested ones flattened) as ``section/key`` scalars."""
    measured = {k: v for k, v in record.items() if k not in PLACE_KEYS}
    return {name: float(v) for name, v in flatten(measured, section).items() if is_number(v)}


def results(data: Mapping[str, Any]) -> dict[str, float]:
    """results.json's numeric leaves as ``probe/...`` scalars."""
    return {name: float(v) for name, v in flatten(data, PROBE).items() if is_number(v)}


def hparams(config: Any) -> dict[str, bool | int | float | str]:
    """A resolved config as flat hyperparameters: dotted keys, lists and None written as JSON."""
    return {name: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
            for name, v in flatten(config.to_dict(), sep=".").items()}
