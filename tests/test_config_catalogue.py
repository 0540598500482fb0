"""A catalogue of bad inputs generated from the config's own schema.

Every config field is walked: the dataclasses of :class:`natkit.config.Config`
(their bounds declared with ``option(..., ge=...)``) and, for each component
section, every registered factory's parameters (bounds declared with
``Annotated[..., Bounds(...)]``). Each field gets the same candidate bad values
(zero, negative, huge, NaN, infinities, a string, a mapping, a list, null, and
lists of those); a candidate is kept only when the field's own declared type and
bounds say it is invalid, decided here from the declaration, not from natkit's
validator. Each kept case runs through ``natkit config --set`` (no training) and
must cost exit code 2, one line on stderr naming the field, and no traceback.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from natkit import config as cfg
from natkit.cli import app
from natkit.plugins import PluginHost
from natkit.registry import CONTEXT_PARAMS
from natkit.testing import TINY
from natkit.values import INT_LIMIT, Bounds, split_annotated

runner = CliRunner()

# Candidate values, as typed after --set key=  (YAML text).
# The edges of the types too: 2**62 fits 64 bits and 1e300 a double, and neither may reach
# an allocation or a float32 (each field's declared upper bound refuses them first).
SCALARS = ["0", "-1", "1000000000000000000000000000000", "4611686018427387904", "1.0e+30",
           "-1.0e+30", "1.0e+300", "2.5", ".nan", ".inf", "-.inf", "abc", "true", "null",
           "{a: 1}", "[]", "[[1]]"]
ELEMENTS = ["0", "-1", "1000000000000000000000000000000", "4611686018427387904", "1.0e+30",
            "1.0e+300", "2.5", ".nan", ".inf", "abc", "true", "null", "{a: 1}"]

NAME = object()  # the hint of a component section's 'name'
MAPPING = object()  # the hint of a section that must be a mapping
CONTEXT = object()  # an option natkit sets itself: no value is valid
EXTRA = object()  # an option passed through to a factory's **options: plain YAML values only


@dataclass(frozen=True)
class Field:
    id: str  # unique: data[shapes].noise
    key: str  # the dotted key a message must name: data.noise
    hint: Any
    bounds: Bounds | None = None
    default: Any = None
    setup: tuple[str, ...] = ()  # --set texts that pick the component first


def _walk_dataclass(cls: type, prefix: str = "") -> list[Field]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if cls is cfg.Config and f.name in cfg.COMPONENT_SECTIONS:
            fields.append(Field(key, key, MAPPING))
            continue
        if dataclasses.is_dataclass(hint):
            fields.append(Field(key, key, MAPPING))
            fields += _walk_dataclass(hint, f"{key}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        fields.append(Field(key, key, hint, cfg.field_bounds(f), default))
    return fields


def _walk_components() -> list[Field]:
    host = PluginHost(autoload=False)  # the built-ins: the schema the suite knows
    fields = []
    for section, kind in cfg.COMPONENT_SECTIONS.items():
        reg = host.registry(kind)
        fields.append(Field(f"{section}.name", f"{section}.name", NAME))
        for entry in reg.entries():
            name = f"{entry.name}:resnet18" if entry.prefix else entry.name
            setup = (f"{section}.name={name}",)
            hints = reg.type_hints(name, include_extras=True)
            for param, p in reg.parameters(name).items():
                hint, bounds = split_annotated(hints.get(param, Any))
                default = list(p.default) if isinstance(p.default, tuple) else p.default
                fields.append(Field(f"{section}[{name}].{param}", f"{section}.{param}", hint,
                                    bounds, default, setup))
            if reg.accepts_extra(name):
                fields.append(Field(f"{section}[{name}].<extra>", f"{section}.extra_option",
                                    EXTRA, setup=setup))
            for param in sorted(CONTEXT_PARAMS.get(kind, ())):
                if param in reg.parameters(name, include_context=True):
                    fields.append(Field(f"{section}[{name}].{param}", f"{section}.{param}",
                                        CONTEXT, setup=setup))
    return fields


FIELDS = _walk_dataclass(cfg.Config) + _walk_components()
NAMES = {kind: set(PluginHost(autoload=False).registry(kind).names())
         for kind in cfg.COMPONENT_SECTIONS.values()}


# ---------------------------------------------------------------- validity, from the declaration


def _in_bounds(x: float, b: Bounds | None) -> bool:
    if b is None:
        return True
    return ((b.gt is None or x > b.gt) and (b.ge is None or x >= b.ge)
            and (b.lt is None or x < b.lt) and (b.le is None or x <= b.le))


def valid(value: Any, hint: Any, bounds: Bounds | None, section: str = "") -> bool:
    """Whether the declared type and bounds admit ``value`` (as YAML parsed it)."""
    if hint is CONTEXT:
        return False
    if hint is EXTRA:  # true/false, finite numbers, strings, null, and lists of them
        if isinstance(value, list):
            return all(valid(v, EXTRA, None) for v in value)
        return value is None or isinstance(value, (bool, int, str)) or (
            isinstance(value, float) and math.isfinite(value))
    if hint is MAPPING:
        return isinstance(value, dict) and not value  # {a: 1} is an unknown key
    if hint is NAME:
        kind = cfg.COMPONENT_SECTIONS[section]
        return isinstance(value, str) and (value in NAMES[kind] or any(
            n.endswith(":<name>") and value.startswith(n[:-6]) for n in NAMES[kind]))
    hint, declared = split_annotated(hint)
    bounds = declared or bounds
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args
        return any(valid(value, a, bounds) for a in args if a is not type(None))
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # natkit's documented rule: an exact integer, however written
        return (isinstance(value, int) and not isinstance(value, bool)
                and abs(value) <= INT_LIMIT and _in_bounds(value, bounds))
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(float(value)) and _in_bounds(float(value), bounds))
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        if not isinstance(value, list):
            return False
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        if fixed and len(value) != len(args):
            return False
        if bounds and bounds.min_len is not None and len(value) < bounds.min_len:
            return False
        if bounds and bounds.max_len is not None and len(value) > bounds.max_len:
            return False
        element = list(args) if fixed else [args[0]] * len(value)
        if not all(valid(v, h, bounds) for v, h in zip(value, element, strict=True)):
            return False
        return not (bounds and bounds.ordered and any(b < a for a, b in itertools.pairwise(value)))
    raise AssertionError(f"the catalogue does not know the hint {hint!r}")


def _is_list(hint: Any) -> tuple[bool, int]:
    hint = split_annotated(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        return _is_list(arms[0]) if len(arms) == 1 else (False, 0)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return True, len(args)
    return origin is list or origin is tuple, 1


def candidates(f: Field) -> list[str]:
    texts = list(SCALARS)
    if f.hint is NAME:
        texts.append("no_such_component")
    is_list, n = _is_list(f.hint) if f.hint not in (NAME, MAPPING, CONTEXT, EXTRA) else (False, 0)
    if is_list:
        n = max(n, (f.bounds.min_len or 1) if f.bounds else 1)
        texts += ["[" + ", ".join([e] * n) + "]" for e in ELEMENTS]
        if f.bounds and f.bounds.ordered and isinstance(f.default, list):
            texts.append(yaml.safe_dump(list(reversed(f.default)), default_flow_style=True).strip())
    return texts


def _cases() -> list[tuple[Field, str]]:
    cases = []
    for f in FIELDS:
        section = f.key.split(".")[0]
        for text in candidates(f):
            if not valid(yaml.safe_load(text), f.hint, f.bounds, section):
                cases.append((f, text))
    return cases


CASES = _cases()


def _check(result: Any, field: Field) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    names = [field.key]
    if field.hint is NAME:  # "unknown solver 'x' (did you mean ...)" names the section's name
        names.append(f"unknown {cfg.COMPONENT_SECTIONS[field.key.split('.')[0]]} '")
    assert any(name in lines[0] for name in names), (names, lines[0])


@pytest.mark.parametrize("field, text", CASES, ids=[f"{f.id}={t}" for f, t in CASES])
def test_every_bad_value_of_every_field_costs_one_line_and_exit_code_2(host, field, text):
    args = ["config"]
    for setting in (*field.setup, f"{field.key}={text}"):
        args += ["--set", setting]
    _check(runner.invoke(app, args), field)


# A sample through `natkit run`: it must stop with the same line before training anything.
RUN_SAMPLE = [c for i, c in enumerate(CASES) if i % max(1, len(CASES) // 12) == 0][:12]


@pytest.mark.parametrize("field, text", RUN_SAMPLE, ids=[f"{f.id}={t}" for f, t in RUN_SAMPLE])
def test_a_sample_of_the_catalogue_fails_the_same_way_in_run(host, tmp_path, field, text):
    args = ["run", "--out", str(tmp_path / "run")]
    picked = {s.split(".")[0] for s in field.setup}  # TINY's options of another component go
    tiny = [s for s in TINY if s.split(".")[0] not in picked]
    for setting in (*tiny, *field.setup, f"{field.key}={text}"):
        args += ["--set", setting]
    result = runner.invoke(app, args)
    _check(result, field)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_every_config_field_is_in_the_catalogue(host):
    covered = {f.id for f, _ in CASES}
    assert {f.id for f in FIELDS} - covered == set()
    # the walk itself reaches every field: each dataclass field and each factory parameter
    leaves = {f.id for f in FIELDS}
    for name in ("train.lr", "eval.mlp_weight_decay", "head.hidden", "augment.crop_scale",
                 "method[nat].cache_targets_mb", "method[supervised].loss", "method[nat].context",
                 "seed", "device", "data[shapes].noise",
                 "data[shapes].scale", "targets[basis].dim", "targets[sphere].dim",
                 "solver[sinkhorn].reg", "backbone[alexnet].widths", "preprocess[highpass].sigma",
                 "data[imagefolder].root", "backbone[timm:resnet18].in_chans"):
        assert name in leaves, name
    registry_params = sum(len(PluginHost(autoload=False).registry(kind).parameters(
        n.replace("<name>", "resnet18"), include_context=True))
        for kind in cfg.COMPONENT_SECTIONS.values()
        for n in PluginHost(autoload=False).registry(kind).names())
    component_fields = [f for f in FIELDS if "[" in f.id and f.hint is not EXTRA]
    assert len(component_fields) == registry_params


def test_the_catalogue_is_big_enough_to_mean_something():
    assert len(CASES) > 500
    kinds = {text for _, text in CASES}
    for text in ("0", "-1", "1000000000000000000000000000000", ".nan", "abc", "{a: 1}", "[]"):
        assert text in kinds
