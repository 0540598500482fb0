"""Name -> factory registries, one per component kind.

A registry never fills itself by import side effects: the plugin manager
(:mod:`natkit.plugins`) calls each plugin's ``register_*`` hook with a
``register`` callback, the built-ins included.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import itertools
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any

from natkit.errors import (
    ConfigError,
    PluginError,
    UnknownComponentError,
    did_you_mean,
    format_choices,
)
from natkit.kinds import TABLE

# Derived from the one table of kinds (natkit.kinds), for the code that reads them by kind.
KINDS: tuple[str, ...] = tuple(kind.name for kind in TABLE)
CONTEXT_PARAMS: dict[str, frozenset[str]] = {kind.name: kind.context for kind in TABLE}
SHARED_PARAMS: dict[str, frozenset[str]] = {kind.name: kind.shared for kind in TABLE if kind.shared}
SECTIONS: dict[str, str] = {kind.name: kind.section for kind in TABLE}

# Integers go to torch and numpy, whose integers have 64 bits.
INT_LIMIT = 2**63 - 1


@dataclass(frozen=True)
class Bounds:
    """Declared limits of an option, checked by :func:`coerce`.

    ``gt``/``ge``/``lt``/``le`` bound a number, or every element of a list of
    numbers; ``min_len``/``max_len`` (or ``length`` for both) bound a list's
    length; ``ordered`` asks for a non-decreasing list such as ``[low, high]``.
    A factory declares them on its parameters with ``Annotated``::

        def create(*, dim: Annotated[int, Bounds(ge=1)] = 128) -> ...
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    min_len: int | None = None
    max_len: int | None = None
    ordered: bool = False
    length: dataclasses.InitVar[int | None] = None

    def __post_init__(self, length: int | None) -> None:
        if length is not None:
            object.__setattr__(self, "min_len", length)
            object.__setattr__(self, "max_len", length)

    def numeric(self) -> list[tuple[str, float]]:
        """The (comparison, bound) pairs that are set, e.g. [('>=', 1)]."""
        return [(word, getattr(self, key)) for key, word in _WORDS.items()
                if getattr(self, key) is not None]


_WORDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
}


class OptionError(ValueError):
    """A factory's complaint about one of its options; the registry names the config field.

    Raised by a factory (or its ``check_options``) as ``OptionError("k", "k must be ...")``;
    :meth:`Registry.create` turns it into ``targets.k: targets 'basis': k must be ...``.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def split_annotated(hint: Any) -> tuple[Any, Bounds | None]:
    """``Annotated[int, Bounds(ge=1)]`` -> ``(int, Bounds(ge=1))``; other hints -> ``(hint, None)``."""
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        found = [e for e in extras if isinstance(e, Bounds)]
        return base, (found[-1] if found else None)
    return hint, None


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


_NONE = type(None)
_DIGITS = r"\d+(?:_\d+)*"
_NUMBER = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters so an error message stays one short line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number_text(value: Any) -> str | None:
    """A string that reads as a decimal number (1e-3, 1E3, .5, -2e-4, 1_000), without '_'."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return value.strip().replace("_", "")
    return None


def _as_int(value: Any, where: str) -> int:
    """Integers, and numbers that are exact integers however written: 1000, 1_000, 1e3, 1000.0."""
    given = value
    too_big = ConfigError(f"{where}: expected an integer of at most 64 bits (|value| < 2**63), "
                          f"got {shown(given)}")
    text = _number_text(value)
    if text is not None:
        exact = Decimal(text)
        if exact == exact.to_integral_value():
            if exact.adjusted() > 19:  # beyond 2**63, and not worth expanding
                raise too_big
            value = int(exact)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {shown(given)}")
    if abs(value) > INT_LIMIT:
        raise too_big
    return value


def _as_float(value: Any, where: str) -> float:
    """Numbers, and strings that read as numbers (YAML 1.1 reads 1e-3 as a string)."""
    given = value
    text = _number_text(value)
    if text is not None:
        value = float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {shown(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond the float range
        value = math.inf
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {shown(given)}")
    return value


def check_bounds(value: Any, bounds: Bounds | None, where: str, label: str | None = None) -> None:
    """Check a number against ``bounds``: ``where: expected a value >= 1, got 0``.

    With ``label`` (a component option), the message reads
    ``where: label must be >= 1, got 0``.
    """
    if bounds is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for word, bound in bounds.numeric():
        if not _OPS[word](value, bound):
            what = f"{label} must be" if label else "expected a value"
            raise ConfigError(f"{where}: {what} {word} {bound}, got {shown(value)}")


def _check_list(items: list[Any], bounds: Bounds | None, where: str) -> None:
    if bounds is None:
        return
    n = len(items)
    if bounds.min_len is not None and bounds.min_len == bounds.max_len and n != bounds.min_len:
        raise ConfigError(f"{where}: expected a list of {bounds.min_len} values, got {shown(items)}")
    if bounds.min_len is not None and n < bounds.min_len:
        raise ConfigError(f"{where}: expected at least {bounds.min_len} value"
                          f"{'s' if bounds.min_len != 1 else ''}, got {shown(items)}")
    if bounds.max_len is not None and n > bounds.max_len:
        raise ConfigError(f"{where}: expected at most {bounds.max_len} values, got {n}")
    if bounds.ordered and any(b < a for a, b in itertools.pairwise(items)):
        shape = "[low, high] with low <= high" if n == 2 else "values in increasing order"
        raise ConfigError(f"{where}: expected {shape}, got {shown(items)}")


def coerce(value: Any, hint: Any, where: str, bounds: Bounds | None = None, *,
           label: str | None = None) -> Any:
    """Check ``value`` against a simple annotation and its bounds; returns the converted value.

    ``where`` names the config field in messages. Numbers written as a person
    types them are accepted as text too (``1e-3``, ``1E3``, ``-2e-4``); an
    integer field takes any number that is an exact integer (``1e3``, ``1000.0``)
    within 64 bits. NaN and infinities are refused for every float. Bounds apply
    to a number, or to each element of a list of numbers, whose length and order
    they may also fix. ``Annotated[T, Bounds(...)]`` carries bounds.
    """
    hint, declared = split_annotated(hint)
    bounds = declared or bounds
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        arms = [a for a in args if a is not _NONE]
        errors = []
        for arm in arms:
            try:
                return coerce(value, arm, where, bounds, label=label)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: unexpected value {shown(value)}")
    if origin is typing.Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, "
                              f"got {shown(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}")
        return value
    if hint is int:
        value = _as_int(value, where)
        check_bounds(value, bounds, where, label)
        return value
    if hint is float:
        value = _as_float(value, where)
        check_bounds(value, bounds, where, label)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}")
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        fixed = origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
        if fixed and len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {shown(value)}")
        element_hints = list(args) if fixed else [args[0] if args else Any] * len(value)
        items = [coerce(v, h, where, bounds, label=label)
                 for v, h in zip(value, element_hints, strict=True)]
        _check_list(items, bounds, where)
        return tuple(items) if (origin or hint) is tuple else items
    return value
