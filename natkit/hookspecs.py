"""The hooks a natkit plugin may implement (pluggy project ``natkit``).

A plugin is any module or object with functions marked ``@natkit.hookimpl``;
a package ships one by declaring an entry point in the ``natkit`` group::

    [project.entry-points.natkit]
    my_plugin = "my_package.plugin"

Every hook is optional. The ``register_*`` hooks, one per kind of component
(made from the table in :mod:`natkit.kinds`: ``register_methods``,
``register_backbones``, ``register_targets``, ``register_solvers``,
``register_preprocessors``, ``register_datasets``), receive a ``register``
callback, ``register(name, factory, *, help=None, prefix=False)``; the
built-in components (NAT and supervised training included) use exactly these
hooks. ``register_commands`` adds commands to the ``natkit`` CLI. The
lifecycle hooks receive a :class:`natkit.runview.RunView`: a live, read-only
view of the run, the same object from start to end. Under torchrun they run on
rank 0 only, where the files are written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from natkit.kinds import TABLE, Kind

if TYPE_CHECKING:
    from natkit.runview import RunView

hookspec = pluggy.HookspecMarker("natkit")
hookimpl = pluggy.HookimplMarker("natkit")


def _register_hook(kind: Kind) -> Callable[[Any], None]:
    """The ``register_*`` hookspec of one kind of component, made from its row in natkit.kinds."""

    def register(register: Any) -> None:
        pass

    register.__name__ = register.__qualname__ = kind.hook
    register.__doc__ = kind.hook_doc
    return hookspec(register)


# register_methods, register_backbones, ...: one per row of the table of kinds
for _kind in TABLE:
    globals()[_kind.hook] = _register_hook(_kind)
del _kind


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``natkit`` command line: ``cli`` is its typer app (``@cli.command()``)."""


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
    """A run's life in this process ended: trained (and evaluated, when enabled), or stopped early.

    Fired on every way out, an interruption or an error included; ``results`` is
    results.json when the run was evaluated, else None.
    """
