"""The hooks a natkit plugin may implement (pluggy project ``natkit``).

A plugin is any module or object with functions marked ``@natkit.hookimpl``;
a package ships one by declaring an entry point in the ``natkit`` group::

    [project.entry-points.natkit]
    my_plugin = "my_package.plugin"

Every hook is optional. The ``register_*`` hooks receive a ``register``
callback, ``register(name, factory, *, help=None, prefix=False)``; the
built-in components (NAT and supervised training included) use exactly these
hooks. The lifecycle hooks receive a :class:`natkit.runview.RunView`: a live,
read-only view of the run, the same object from start to end. Under torchrun
they run on rank 0 only, where the files are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from natkit.runview import RunView

hookspec = pluggy.HookspecMarker("natkit")
hookimpl = pluggy.HookimplMarker("natkit")


@hookspec
def register_methods(register: Any) -> None:
    """Add training methods: ``factory(*, context: MethodContext, **options) -> Method``."""


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
def on_run_start(run: RunView) -> None:
    """A run is about to train (fresh or resumed); ``run.dir`` exists."""


@hookspec
def on_step_end(run: RunView, metrics: dict[str, Any]) -> None:
    """An optimizer step finished; ``metrics`` has step, epoch, loss and lr."""


@hookspec
def on_reassign(run: RunView, metrics: dict[str, Any]) -> None:
    """The method reassigned targets (NAT: in a batch; SeLa: at an epoch's start).

    ``metrics`` has step and epoch, and what the method reports: NAT gives the
    fraction ``changed`` and the batch's costs before and after.
    """


@hookspec
def on_epoch_end(run: RunView, metrics: dict[str, Any]) -> None:
    """An epoch finished and its checkpoint is written; ``metrics`` summarises the epoch."""


@hookspec
def on_run_end(run: RunView, results: dict[str, Any] | None) -> None:
    """Training (and evaluation, when enabled) finished; ``results`` is results.json or None."""
