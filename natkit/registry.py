"""Name -> factory registries, one per component kind.

A registry never fills itself by import side effects: the plugin manager
(:mod:`natkit.plugins`) calls each plugin's ``register_*`` hook with a
``register`` callback, the built-ins included.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natkit.errors import (
    ConfigError,
    PluginError,
    UnknownComponentError,
    clip,
    did_you_mean,
    format_choices,
)
from natkit.kinds import TABLE

# re-exported: components and plugins import the option checks from here
from natkit.values import Bounds, OptionError, coerce, shown  # noqa: F401

# Derived from the one table of kinds (natkit.kinds), for the code that reads them by kind.
KINDS: tuple[str, ...] = tuple(kind.name for kind in TABLE)
CONTEXT_PARAMS: dict[str, frozenset[str]] = {kind.name: kind.context for kind in TABLE}
SHARED_PARAMS: dict[str, frozenset[str]] = {kind.name: kind.shared for kind in TABLE if kind.shared}
SECTIONS: dict[str, str] = {kind.name: kind.section for kind in TABLE}


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory and the plugin it came from."""

    name: str
    factory: Callable[..., Any]
    plugin: str
    help: str = ""
    prefix: bool = False  # a 'prefix:' entry such as 'timm:' takes any suffix

    @property
    def display_name(self) -> str:
        return f"{self.name}:<name>" if self.prefix else self.name


def _first_line(obj: Any) -> str:
    """A docstring's first line as plain text: reST roles and literal quotes removed."""
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return re.sub(r":[a-z:]+:`~?([^`]+)`", r"\1", line).replace("``", "")


@dataclass
class Registry:
    """Components of one kind, by name; ``create`` validates names and keywords."""

    kind: str
    _entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, name: str, factory: Callable[..., Any], *, plugin: str = "natkit",
            help: str | None = None, prefix: bool = False) -> None:
        """Register ``factory`` under ``name``; a prefix entry serves every ``name:<suffix>``."""
        if not isinstance(name, str) or not name or ":" in name or name != name.strip():
            raise PluginError(f"plugin '{plugin}': invalid {self.kind} name {name!r}")
        if not callable(factory):
            raise PluginError(f"plugin '{plugin}': {self.kind} '{name}' factory is not callable")
        key = name + ":" if prefix else name
        if key in self._entries:
            other = self._entries[key].plugin
            raise PluginError(
                f"plugin '{plugin}': {self.kind} '{name}' is already registered by plugin '{other}'"
            )
        self._entries[key] = Entry(name, factory, plugin, help or _first_line(factory), prefix)

    def entries(self, pattern: str = "*") -> list[Entry]:
        """Entries whose display name matches the glob ``pattern``, sorted by name."""
        found = [e for e in self._entries.values() if fnmatch.fnmatchcase(e.display_name, pattern)]
        return sorted(found, key=lambda e: e.display_name)

    def names(self, pattern: str = "*") -> list[str]:
        """Display names matching ``pattern`` (a prefix entry shows as ``timm:<name>``)."""
        return [e.display_name for e in self.entries(pattern)]

    def __contains__(self, name: str) -> bool:
        try:
            self.lookup(name)
        except UnknownComponentError:
            return False
        return True

    def lookup(self, name: str) -> tuple[Entry, str | None]:
        """Return the entry for ``name`` and, for a prefix entry, the suffix."""
        if not isinstance(name, str):
            raise UnknownComponentError(f"{self.kind}: expected a name, got {clip(repr(name))}")
        if name in self._entries and not self._entries[name].prefix:
            return self._entries[name], None
        head, sep, tail = name.partition(":")
        if sep and head + ":" in self._entries:
            if not tail:
                raise UnknownComponentError(f"{self.kind} '{clip(name)}': expected a name after "
                                            f"'{head}:'")
            return self._entries[head + ":"], tail
        valid = [e.display_name for e in self._entries.values()]
        plain = [e.name for e in self._entries.values() if not e.prefix]
        raise UnknownComponentError(
            f"unknown {self.kind} '{clip(name)}'{did_you_mean(name, plain)}; valid: "
            f"{format_choices(valid)}"
        )

    def parameters(self, name: str, *, include_context: bool = False) -> dict[str, inspect.Parameter]:
        """The keyword parameters of the factory for ``name`` (context ones excluded by default)."""
        entry, suffix = self.lookup(name)
        params = list(inspect.signature(entry.factory).parameters.values())
        if suffix is not None:
            params = params[1:]  # the suffix is the prefix factory's first argument
        skip = set() if include_context else CONTEXT_PARAMS.get(self.kind, frozenset())
        return {
            p.name: p for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
        }

    def type_hints(self, name: str, *, include_extras: bool = False) -> dict[str, Any]:
        """The resolved annotations of the factory for ``name`` (empty if unresolvable).

        With ``include_extras``, ``Annotated[..., Bounds(...)]`` hints keep their bounds.
        """
        factory = self.lookup(name)[0].factory
        target = factory.__init__ if inspect.isclass(factory) else factory
        try:
            return typing.get_type_hints(target, include_extras=include_extras)
        except Exception:  # an unresolvable annotation only costs us the type check
            return {}

    @property
    def section(self) -> str:
        """The config section of this kind (``data`` for datasets)."""
        return SECTIONS.get(self.kind, self.kind)

    def option_error(self, name: str, exc: OptionError) -> ConfigError:
        """``section.option: kind 'name': message``: one line naming the config field."""
        return ConfigError(f"{self.section}.{exc.option}: {self.kind} '{name}': {exc}")

    def check_options(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Run the factory's own cheap check of its options, if it has one; returns the options.

        A factory may carry a ``check_options`` attribute: ``check_options(options)``
        (``check_options(suffix, options)`` for a prefix entry) that raises
        :class:`OptionError` for a bad option and returns the options, possibly
        converted. It runs when a config is resolved, long before the component is built.
        """
        entry, suffix = self.lookup(name)
        check = getattr(entry.factory, "check_options", None)
        if check is None:
            return options
        args = (suffix,) if suffix is not None else ()
        try:
            checked = check(*args, dict(options))
        except OptionError as exc:
            raise self.option_error(name, exc) from None
        return dict(options) if checked is None else dict(checked)

    def accepts_extra(self, name: str) -> bool:
        """Whether the factory for ``name`` takes arbitrary keywords (``**options``)."""
        factory = self.lookup(name)[0].factory
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the component ``name``; ``None`` values are dropped so defaults live in one place."""
        entry, suffix = self.lookup(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        params = self.parameters(name, include_context=True)
        hints = self.type_hints(name, include_extras=True)
        for key, value in list(kwargs.items()):
            if key not in params:
                if self.accepts_extra(name):
                    continue
                shown = [p for p in params if p not in CONTEXT_PARAMS.get(self.kind, ())]
                raise ConfigError(
                    f"{self.kind} '{name}' has no parameter '{key}'{did_you_mean(key, shown)}; "
                    f"valid: {format_choices(shown) or '(none)'}"
                )
            if key in hints:
                kwargs[key] = coerce(value, hints[key], f"{self.section}.{key}",
                                     label=f"{self.kind} '{name}': {key}")
        missing = [
            p.name for p in params.values()
            if p.default is p.empty and p.name not in kwargs
        ]
        if missing:
            raise ConfigError(f"{self.kind} '{name}': missing required parameter '{missing[0]}'")
        args = (suffix,) if suffix is not None else ()
        try:
            return entry.factory(*args, **kwargs)
        except OptionError as exc:
            raise self.option_error(name, exc) from exc
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{self.kind} '{name}': {exc}") from exc
