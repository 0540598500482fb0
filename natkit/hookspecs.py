"""The hooks a natkit plugin may implement (pluggy project ``natkit``).

A plugin is any module or object with functions marked ``@natkit.hookimpl``;
a package ships one by declaring an entry point in the ``natkit`` group::

    [project.entry-points.natkit]
    my_plugin = "my_package.plugin"

Every hook is optional. The ``register_*`` hooks receive a ``register``
callback, ``register(name, factory, *, help=None, prefix=False)``; the
built-in components use exactly these hooks. The lifecycle hooks receive the
running :class:`natkit.engine.Run` (read its attributes; do not replace them).
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("natkit")
hookimpl = pluggy.HookimplMarker("natkit")


@hookspec
def register_backbones(register: Any) -> None:
    """Add backbones: ``factory(*, in_chans, image_size, **options) -> nn.Module``."""


@hookspec
def register_targets(register: Any) -> None:
    """Add target distributions: ``factory(*, dim, seed, **options) -> Targets``."""


@hookspec
def register_solvers(register: Any) -> None:
    """Add assignment solvers: ``factory(**options) -> callable(cost[b, b]) -> LongTensor[b]``."""


@hookspec
def register_preprocessors(register: Any) -> None:
    """Add preprocessors: ``factory(*, in_channels, **options) -> nn.Module`` with ``out_channels``."""


@hookspec
def register_datasets(register: Any) -> None:
    """Add datasets: ``factory(*, split, **options) -> Dataset`` of ``(image, index, label)``."""


@hookspec
def on_run_start(run: Any) -> None:
    """A run is about to train (fresh or resumed); ``run.dir`` exists."""


@hookspec
def on_step_end(run: Any, metrics: dict[str, Any]) -> None:
    """An optimizer step finished; ``metrics`` has step, epoch, loss and lr."""


@hookspec
def on_reassign(run: Any, metrics: dict[str, Any]) -> None:
    """A batch was reassigned; ``metrics`` has step, epoch, ``changed`` and the batch costs."""


@hookspec
def on_epoch_end(run: Any, metrics: dict[str, Any]) -> None:
    """An epoch finished and its checkpoint is written; ``metrics`` summarises the epoch."""


@hookspec
def on_run_end(run: Any, results: dict[str, Any] | None) -> None:
    """Training (and evaluation, when enabled) finished; ``results`` is results.json or None."""
