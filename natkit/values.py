"""Option values as a person types them, checked against declared types and bounds.

The config's fields and every component factory's parameters declare a type
(and optionally :class:`Bounds` through ``Annotated``); :func:`coerce` turns a
value read from YAML or ``--set`` into that type or raises one ConfigError line
naming the dotted field. A factory complains about its own options with
:class:`OptionError`. This module knows nothing of registries or plugins.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from natkit.errors import ConfigError

# Integers go to torch and numpy, whose integers have 64 bits.
INT_LIMIT = 2**63 - 1
# The widest layer, feature or target space natkit builds (the paper's widest is 4096): a
# wider one is refused when the config is read, not by the allocator after training.
MAX_WIDTH = 65536
# Numbers that reach float32 arithmetic (step sizes, decays) stay below float32's 3.4e38.
FLOAT32_SAFE = 1e30
# The largest image side natkit decodes or generates (ImageNet's preset uses 256).
MAX_IMAGE_SIZE = 4096


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


def _same_kind(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the kind ``hint`` names: a number, a string or a list."""
    hint, _ = split_annotated(hint)
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return any(type(value) is type(a) for a in typing.get_args(hint))
    if hint in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return origin in (tuple, list) and isinstance(value, (list, tuple))


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
        # the arm of the value's own kind says best what is wrong (a number out of bounds
        # in a "number or 'auto'" field is told as a number)
        own = [e for arm, e in zip(arms, errors, strict=True) if _same_kind(value, arm)]
        if len(errors) == 1 or len(own) == 1:
            raise ConfigError((own or errors)[0])
        raise ConfigError(f"{where}: unexpected value {shown(value)}")
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
