"""natkit: Noise As Targets and other alignment-to-targets self-supervised learning.

``natkit.create_<kind>(name, **options)`` builds a registered component of each
kind in :mod:`natkit.kinds` (``create_method``, ``create_backbone``,
``create_targets``, ``create_solver``, ``create_preprocess``,
``create_dataset``); ``list_components(kind, pattern)`` lists their names.
``wrap_dataset`` turns any dataset of ``(image, label)`` into natkit's form, and
``load_pretrained`` rebuilds the RGB encoder ``natkit export`` wrote.
``NATObjective`` is NAT's loss for a training loop of one's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from natkit.errors import NatkitError
from natkit.hookspecs import hookimpl
from natkit.kinds import TABLE, Kind
from natkit.plugins import get_host, registry
from natkit.version import __version__

if TYPE_CHECKING:  # the lazy names below, for type checkers
    from natkit.datasets.wrapped import wrap_dataset
    from natkit.objective import NATObjective
    from natkit.pretrained import load_pretrained


def _creator(kind: Kind) -> Callable[..., Any]:
    """``create_<kind>(name, **options)``, made from the kind's row in natkit.kinds."""

    def create(name: str, **kwargs: Any) -> Any:
        return registry(kind.name).create(name, **kwargs)

    create.__name__ = create.__qualname__ = f"create_{kind.name}"
    create.__doc__ = (f"Build one of the registered {kind.what} by name, e.g. "
                      f"``create_{kind.name}({kind.examples[0]!r}, ...)``.")
    return create


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Names registered for ``kind`` that match the glob ``pattern`` (e.g. ``"s*"``)."""
    return registry(kind).names(pattern)


# imported when first used: `import natkit` (every command line, every plugin) stays light
_LAZY = {"load_pretrained": "natkit.pretrained", "wrap_dataset": "natkit.datasets.wrapped",
         "NATObjective": "natkit.objective"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'natkit' has no attribute {name!r}")


# create_method, create_backbone, ...: one per row of the table of kinds
for _kind in TABLE:
    globals()[f"create_{_kind.name}"] = _creator(_kind)
del _kind

__all__ = [
    "NATObjective",
    "NatkitError",
    "__version__",
    *(f"create_{kind.name}" for kind in TABLE),
    "get_host",
    "hookimpl",
    "list_components",
    "load_pretrained",
    "wrap_dataset",
]
