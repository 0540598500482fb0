"""Name -> factory registries, one per component kind.

A registry never fills itself by import side effects: the plugin manager
(:mod:`natkit.plugins`) calls each plugin's ``register_*`` hook with a
``register`` callback, the built-ins included.
"""

from __future__ import annotations

import fnmatch
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natkit.errors import (
    ConfigError,
    PluginError,
    UnknownComponentError,
    did_you_mean,
    format_choices,
)

KINDS: tuple[str, ...] = ("backbone", "targets", "solver", "preprocess", "dataset")

# Arguments natkit itself passes when it builds a component for a run; a config
# file may not set them (they follow from the other components).
CONTEXT_PARAMS: dict[str, frozenset[str]] = {
    "backbone": frozenset({"in_chans", "image_size"}),
    "targets": frozenset(),
    "solver": frozenset(),
    "preprocess": frozenset({"in_channels"}),
    "dataset": frozenset({"split"}),
}


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
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


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
            raise UnknownComponentError(f"{self.kind}: expected a name, got {name!r}")
        if name in self._entries and not self._entries[name].prefix:
            return self._entries[name], None
        head, sep, tail = name.partition(":")
        if sep and head + ":" in self._entries:
            if not tail:
                raise UnknownComponentError(f"{self.kind} '{name}': expected a name after '{head}:'")
            return self._entries[head + ":"], tail
        valid = [e.display_name for e in self._entries.values()]
        plain = [e.name for e in self._entries.values() if not e.prefix]
        raise UnknownComponentError(
            f"unknown {self.kind} '{name}'{did_you_mean(name, plain)}; valid: {format_choices(valid)}"
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

    def type_hints(self, name: str) -> dict[str, Any]:
        """The resolved annotations of the factory for ``name`` (empty if unresolvable)."""
        factory = self.lookup(name)[0].factory
        target = factory.__init__ if inspect.isclass(factory) else factory
        try:
            return typing.get_type_hints(target)
        except Exception:  # an unresolvable annotation only costs us the type check
            return {}

    def accepts_extra(self, name: str) -> bool:
        """Whether the factory for ``name`` takes arbitrary keywords (``**options``)."""
        factory = self.lookup(name)[0].factory
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())

    def create(self, name: str, **kwargs: Any) -> Any:
        """Build the component ``name``; ``None`` values are dropped so defaults live in one place."""
        entry, suffix = self.lookup(name)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        params = self.parameters(name, include_context=True)
        hints = self.type_hints(name)
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
                kwargs[key] = coerce(value, hints[key], f"{self.kind} '{name}': {key}")
        missing = [
            p.name for p in params.values()
            if p.default is p.empty and p.name not in kwargs
        ]
        if missing:
            raise ConfigError(f"{self.kind} '{name}': missing required parameter '{missing[0]}'")
        args = (suffix,) if suffix is not None else ()
        try:
            return entry.factory(*args, **kwargs)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{self.kind} '{name}': {exc}") from exc


_NONE = type(None)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple annotation, converting what YAML cannot express."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in (a for a in args if a is not _NONE):
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) else None
        items = [coerce(v, item, where) if item is not None else v for v in value]
        return tuple(items) if (origin or hint) is tuple else items
    return value

