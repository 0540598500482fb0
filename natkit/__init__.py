"""natkit: Noise As Targets and other alignment-to-targets self-supervised learning."""

from __future__ import annotations

from typing import Any

from natkit.errors import NatkitError
from natkit.hookspecs import hookimpl
from natkit.plugins import get_host, registry
from natkit.version import __version__

__all__ = [
    "NatkitError",
    "__version__",
    "create_backbone",
    "create_dataset",
    "create_method",
    "create_preprocess",
    "create_solver",
    "create_targets",
    "get_host",
    "hookimpl",
    "list_components",
]


def create_method(name: str, **kwargs: Any) -> Any:
    """Build a training method by name, e.g. ``create_method("nat", context=ctx)``."""
    return registry("method").create(name, **kwargs)


def create_backbone(name: str, **kwargs: Any) -> Any:
    """Build a backbone by name, e.g. ``create_backbone("alexnet", in_chans=2)``."""
    return registry("backbone").create(name, **kwargs)


def create_targets(name: str, **kwargs: Any) -> Any:
    """Build a target distribution by name, e.g. ``create_targets("sphere", dim=128)``."""
    return registry("targets").create(name, **kwargs)


def create_solver(name: str, **kwargs: Any) -> Any:
    """Build an assignment solver by name, e.g. ``create_solver("hungarian")``."""
    return registry("solver").create(name, **kwargs)


def create_preprocess(name: str, **kwargs: Any) -> Any:
    """Build a preprocessor by name, e.g. ``create_preprocess("sobel")``."""
    return registry("preprocess").create(name, **kwargs)


def create_dataset(name: str, **kwargs: Any) -> Any:
    """Build a dataset split by name, e.g. ``create_dataset("digits", split="test")``."""
    return registry("dataset").create(name, **kwargs)


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Names registered for ``kind`` that match the glob ``pattern`` (e.g. ``"s*"``)."""
    return registry(kind).names(pattern)
