"""Run configuration: defaults in one place, YAML files, ``--set`` overrides, validation.

A config is built in layers: the defaults below, then a YAML file, then
command-line options, then ``--set key=value`` overrides (dotted keys, values
parsed as YAML). Component sections (``method``, ``data``, ``preprocess``,
``backbone``, ``targets``, ``solver``) hold a ``name`` plus that component's own options,
checked against its factory; their defaults live in the factory's signature.
When a layer picks a different component ``name``, the options the earlier
layers gave the old component are dropped, except the options every component
of that kind shares (:data:`natkit.registry.SHARED_PARAMS`: a target
distribution's ``dim`` and ``seed``) when the new component takes them too. So
``--targets basis`` keeps the run's ``targets.dim`` (32 by default) instead of
falling back to basis's own default of 128, and the sphere-vs-basis comparison
compares one dimension.

Every value is validated when the config is resolved, before anything is built
or trained, and every mistake is one :class:`~natkit.errors.ConfigError` line
that names the dotted field:

* Numbers may be written as a person types them: ``1e-3``, ``1E3``, ``.5``,
  ``-2e-4``, ``1_000`` (YAML 1.1 reads ``1e-3`` as a string; natkit reads it as
  a number). An integer field takes any number that is an exact integer, however
  written (``1e3``, ``1000.0``), and refuses fractions (``2.5``, ``1e-3``);
  integers must fit in 64 bits.
* NaN and infinities are refused for every float option (no option gives
  ``.inf`` a meaning: write a large number instead).
* Bounds (``gt``, ``ge``, ``lt``, ``le``) are declared on the fields below with
  :func:`option`, and on component factories' parameters with
  ``Annotated[int, Bounds(ge=1)]``; on a list they bound every element, and
  ``length``/``min_len``/``max_len``/``ordered`` bound the list itself.
* YAML aliases are allowed only while they stay small: a document whose aliases
  would add more than :data:`ALIAS_EXPANSION_LIMIT` nodes once expanded (a
  "billion laughs" bomb), or that nests deeper than :data:`MAX_YAML_DEPTH`, is
  refused (naming the file, or the ``--set`` text) without being expanded.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

from natkit.errors import ConfigError, NatkitError, UnknownComponentError, did_you_mean, format_choices
from natkit.plugins import registry
from natkit.registry import CONTEXT_PARAMS, SHARED_PARAMS
from natkit.schema import (  # noqa: F401 - the schema is part of this module's interface
    COMPONENT_SECTIONS,
    REPLACED_KEYS,
    AugmentConfig,
    Config,
    EvalConfig,
    HeadConfig,
    TrainConfig,
    component_options,
    defaults,
    difference,
    dump,
    field_bounds,
    option,
)
from natkit.values import coerce, shown
from natkit.yamlio import (  # noqa: F401 - as are the YAML readers
    ALIAS_EXPANSION_LIMIT,
    MAX_YAML_DEPTH,
    echo,
    load_yaml,
    parse_override,
    safe_yaml,
)


def merge(base: dict[str, Any], layer: dict[str, Any], *, rename: bool = True) -> dict[str, Any]:
    """Deep-merge ``layer`` over ``base``.

    A component section given as a bare string is its name. With ``rename``, a
    new component name drops the old component's options,
    except the shared ones (``targets.dim``, ``targets.seed``) the new one takes.
    """
    out = copy.deepcopy(base)
    for key, value in layer.items():
        if key in COMPONENT_SECTIONS and isinstance(value, str):
            value = {"name": value}  # a bare name: `--set solver=emd` means solver.name=emd
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            renamed = (rename and key in COMPONENT_SECTIONS and "name" in value
                       and value["name"] != old.get("name"))
            if renamed:
                out[key] = {**_shared_options(key, old, value["name"]), **copy.deepcopy(value)}
            else:
                out[key] = merge(old, value, rename=rename)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _shared_options(section: str, old: dict[str, Any], new_name: Any) -> dict[str, Any]:
    """The options of ``old`` that every component of the kind shares and ``new_name`` takes."""
    kind = COMPONENT_SECTIONS[section]
    given = {k: copy.deepcopy(old[k]) for k in SHARED_PARAMS.get(kind, ()) if k in old}
    if not given:
        return {}
    try:
        params = registry(kind).parameters(new_name)
    except NatkitError:  # an unknown name: resolve() reports it
        return {}
    return {k: v for k, v in given.items() if k in params}


def build(file: str | Path | None = None, overrides: list[str] | None = None, *,
          base: dict[str, Any] | None = None, preset: str | None = None,
          **components: Any) -> Config:
    """``base`` (the defaults), a preset, a YAML file, component names, then ``key=value`` texts."""
    data = defaults() if base is None else base
    if preset is not None:
        from natkit import presets

        data = merge(data, presets.load(preset))
    if file is not None:
        data = merge(data, load_yaml(file))
    for section, name in components.items():
        if name is None:
            continue
        if section in COMPONENT_SECTIONS:
            data = merge(data, {section: {"name": name}})
        else:
            data = merge(data, {section: name})
    combined: dict[str, Any] = {}
    for text in overrides or []:  # one layer, so the order of --set options does not matter
        combined = merge(combined, parse_override(text), rename=False)
    return resolve(merge(data, combined))


# ---------------------------------------------------------------- validation


def resolve(data: dict[str, Any]) -> Config:
    """Validate a plain config and fill in every default; raises ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(Config)}
    for key in data:
        if key in REPLACED_KEYS:
            raise ConfigError(f"config key '{key}' was replaced by {REPLACED_KEYS[key]}")
        if key not in known:
            raise ConfigError(f"unknown config key '{echo(key)}'{did_you_mean(str(key), known)}; "
                              f"valid: {format_choices(known)}")
    config = _build_dataclass(Config, data, "")
    for section, kind in COMPONENT_SECTIONS.items():
        setattr(config, section, resolve_component(section, kind, getattr(config, section)))
    for section in ("targets", "solver"):  # cheap to build: catch bad values now, not mid-run
        spec = getattr(config, section)
        registry(COMPONENT_SECTIONS[section]).create(spec["name"], **component_options(spec))
    return config


def _build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            names = [f"{prefix}{k}" for k in fields]
            raise ConfigError(f"unknown config key '{prefix}{echo(key)}'"
                              f"{did_you_mean(f'{prefix}{key}', names)}; valid: {format_choices(names)}")
    values = {}
    for name, f in fields.items():
        where = f"{prefix}{name}"
        if name not in data:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build_dataclass(hint, data[name], f"{where}.")
            continue
        values[name] = coerce(data[name], hint, where, field_bounds(f))
    return cls(**values)


def resolve_component(section: str, kind: str, spec: Any) -> dict[str, Any]:
    """Check a component section (name and options) and fill in the factory's defaults."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{section}: expected a mapping with a 'name', got {shown(spec)}")
    if "name" not in spec:
        raise ConfigError(f"{section}.name: missing (which {kind} to use)")
    name = spec["name"]
    if not isinstance(name, str):
        raise ConfigError(f"{section}.name: expected a string, got {shown(name)}")
    reg = registry(kind)
    reg.lookup(name)  # unknown names fail here: "unknown solver 'x' (did you mean ...); valid: ..."
    params = reg.parameters(name)
    context = CONTEXT_PARAMS.get(kind, frozenset())
    hints = reg.type_hints(name, include_extras=True)
    resolved: dict[str, Any] = {"name": name}
    for key, value in spec.items():
        if key == "name":
            continue
        if key in context:
            raise ConfigError(f"{section}.{key}: set by natkit from the other components; "
                              "remove it")
        if key not in params and not reg.accepts_extra(name):
            raise ConfigError(
                f"{section}.{echo(key)}: {kind} '{name}' has no option '{echo(key)}'"
                f"{did_you_mean(str(key), params)}; valid: {format_choices(params) or '(none)'}"
            )
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{section}: option names are identifiers, got {shown(key)}")
        if key in hints:
            value = coerce(value, hints[key], f"{section}.{key}", label=f"{kind} '{name}': {key}")
        elif key not in params:  # passed through to the factory's **options
            _check_plain(value, f"{section}.{key}")
        resolved[key] = _plain(value)
    for key, p in params.items():
        if key not in resolved:
            if p.default is p.empty:
                raise ConfigError(f"{section}.{key}: required by {kind} '{name}'")
            resolved[key] = _plain(p.default)
    try:
        options = reg.check_options(name, {k: v for k, v in resolved.items() if k != "name"})
    except UnknownComponentError as exc:  # e.g. an unknown timm model
        raise UnknownComponentError(f"{section}.name: {exc}") from None
    return {"name": name, **{k: _plain(v) for k, v in options.items()}}


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    """An option passed through unchecked must be plain YAML: scalars, or lists of them."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {shown(value)}")
        return
    if isinstance(value, list) and depth < 4:
        for item in value:
            _check_plain(item, where, depth + 1)
        return
    raise ConfigError(f"{where}: expected a plain value (true/false, a number, a string, null "
                      f"or a list of them), got {shown(value)}")


def _plain(value: Any) -> Any:
    """YAML has no tuples: lists all the way down."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


