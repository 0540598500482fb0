"""The plugin manager: loads plugins and fills the registries through their hooks.

The built-in components are registered as the plugin ``natkit`` through the same
``register_*`` hooks as any third-party package. Packages are discovered through
the ``natkit`` entry-point group; set ``NATKIT_DISABLE_PLUGIN_AUTOLOAD=1`` to skip
them. A plugin that fails to import is reported by name and left out; one whose
``register_*`` hook raises is left out of that registry. Everything else keeps
working. Each registry is filled on first use, so listing solvers never imports
the libraries behind the backbones.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import pluggy

from natkit import hookspecs
from natkit.errors import PluginError, UnknownComponentError
from natkit.kinds import BY_NAME, BY_WORD
from natkit.registry import KINDS, Registry

ENTRY_POINT_GROUP = "natkit"
AUTOLOAD_ENV = "NATKIT_DISABLE_PLUGIN_AUTOLOAD"
DEBUG_ENV = "NATKIT_DEBUG"  # =1: a failing plugin's file and line, and its traceback
BUILTIN_PLUGIN = "natkit"
BUILTIN_MODULE = "natkit.builtin"  # imported by name: the built-ins sit below the host



class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered; natkit goes on without it."""


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin: its name, distribution and version."""

    name: str
    distribution: str
    version: str
    error: str | None = None


def _version() -> str:
    try:
        return metadata.version("natkit")
    except metadata.PackageNotFoundError:
        return "unknown"


class PluginHost:
    """A pluggy manager plus the registries its plugins fill."""

    def __init__(self, *, autoload: bool | None = None) -> None:
        self.pm = pluggy.PluginManager("natkit")
        self.pm.add_hookspecs(hookspecs)
        self._info: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] = {}  # filled per kind, on first use
        builtin = importlib.import_module(BUILTIN_MODULE)
        self.register(builtin, name=BUILTIN_PLUGIN, distribution="natkit", version=_version())
        if autoload is None:
            autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
        if autoload:
            self.load_entry_points()

    @property
    def hook(self) -> Any:
        """The pluggy hook relay, for firing lifecycle hooks."""
        return self.pm.hook

    def register(self, plugin: Any, name: str | None = None, *, distribution: str = "",
                 version: str = "") -> str:
        """Register a plugin object (module, class or instance) and return its name."""
        name = self.pm.register(plugin, name=name)
        if name is None:
            raise PluginError(f"plugin '{name}' is already registered")
        self._info[name] = PluginInfo(name, distribution or name, version)
        self._registries = {}
        return name

    def unregister(self, name: str) -> None:
        """Remove a plugin by name; its components leave the registries."""
        self.pm.unregister(name=name)
        self._info.pop(name, None)
        self._registries = {}

    def load_entry_points(self) -> None:
        """Import every plugin in the ``natkit`` entry-point group, isolating failures."""
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            if self.pm.has_plugin(ep.name) or ep.name in self._info:
                if dist != self._info.get(ep.name, PluginInfo("", "", "")).distribution:
                    warnings.warn(f"natkit plugin '{ep.name}' from '{dist}' is skipped: the name "
                                  f"is taken by '{self._info[ep.name].distribution}'",
                                  PluginWarning, stacklevel=2)
                continue
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name, distribution=dist, version=version)
            except Exception as exc:  # a broken plugin must not take natkit down
                self._fail(ep.name, dist, version,
                           f"failed to load: {type(exc).__name__}: {exc}{_where(exc)}")

    def _fail(self, name: str, dist: str, version: str, why: str) -> None:
        self._info[name] = PluginInfo(name, dist or name, version, error=why)
        warnings.warn(f"natkit plugin '{name}' {why}; continuing without it",
                      PluginWarning, stacklevel=3)

    def _hook_failed(self, name: str, hook: str, exc: Exception) -> None:
        info = self._info.get(name, PluginInfo(name, name, ""))
        self._fail(name, info.distribution, info.version,
                   f"failed in its {hook} hook: {type(exc).__name__}: {exc}{_where(exc)}")

    def plugins(self) -> list[PluginInfo]:
        """Every plugin natkit knows, loaded or failed, sorted with the built-ins first."""
        self.registries()  # registering can still fail a plugin
        return sorted(self._info.values(), key=lambda p: (p.name != BUILTIN_PLUGIN, p.name))

    def registry(self, kind: str) -> Registry:
        """One registry, filled on first use by every plugin's hook for that kind."""
        if kind not in self._registries:
            reg = Registry(kind)
            for name, _ in self.pm.list_name_plugin():
                self._register_kind(name, reg)
            self._registries[kind] = reg
        return self._registries[kind]

    def registries(self) -> dict[str, Registry]:
        """Every kind's registry."""
        return {kind: self.registry(kind) for kind in KINDS}

    def add_commands(self, cli: Any) -> None:
        """Let every plugin add its commands to the ``natkit`` typer app ``cli``.

        A plugin whose ``register_commands`` raises is reported by name and left
        out; the commands of the others, and natkit's own, keep working.
        """
        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = list(cli.registered_commands)
            try:
                impl.function(**{arg: cli for arg in impl.argnames})
                taken = _reused_names(before, cli.registered_commands[len(before):])
                if taken:
                    raise PluginError(f"command '{taken[0]}' is taken; a plugin adds commands "
                                      "of its own names")
            except Exception as exc:  # never fatal: report the plugin and go on
                cli.registered_commands[:] = before  # all or nothing, as for components
                self._hook_failed(impl.plugin_name, "register_commands", exc)

    def _register_kind(self, name: str, reg: Registry) -> None:
        """Add one plugin's components of one kind, all or nothing: a failure adds none."""
        staged = Registry(reg.kind, dict(reg._entries))
        for impl in getattr(self.pm.hook, BY_NAME[reg.kind].hook).get_hookimpls():
            if impl.plugin_name != name:
                continue

            def register(*args: Any, **kwargs: Any) -> None:
                staged.add(*args, plugin=name, **kwargs)

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:  # never fatal: report the plugin and go on
                self._hook_failed(name, BY_NAME[reg.kind].hook, exc)
                return
        reg._entries = staged._entries


def _command_name(info: Any) -> str:
    """The name a typer command answers to (its function's name, dashed, unless given)."""
    return info.name or info.callback.__name__.lower().replace("_", "-")


def _reused_names(before: list[Any], added: list[Any]) -> list[str]:
    """Names of the ``added`` typer commands that an earlier command already answers to."""
    taken = {_command_name(info) for info in before}
    return [name for name in map(_command_name, added) if name in taken]


def _where(exc: BaseException) -> str:
    """With NATKIT_DEBUG=1, ' (at FILE:LINE)' of the line that raised, and the traceback on stderr."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return ""
    traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, created (and plugins loaded) on first use."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host(host: PluginHost | None = None) -> PluginHost | None:
    """Replace the process-wide host (tests); ``None`` reloads on next use. Returns the old one."""
    global _host
    old, _host = _host, host
    return old


def registry(kind: str) -> Registry:
    """The registry of one component kind (singular or plural: 'solver' or 'solvers')."""
    found = BY_WORD.get(kind)
    if found is None:
        raise UnknownComponentError(f"unknown component kind '{kind}'; valid: {', '.join(KINDS)}")
    return get_host().registry(found.name)


class _Silent:
    """A hook relay on which every hook is a no-op (ranks other than 0 write nothing)."""

    def __getattr__(self, name: str) -> Any:
        return lambda **kwargs: None


_SILENT = _Silent()


def hooks(*, active: bool = True) -> Any:
    """The host's hook relay for firing lifecycle hooks, or a silent one when not ``active``."""
    return get_host().hook if active else _SILENT
