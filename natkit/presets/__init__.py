"""Named configs shipped with natkit: ``natkit run --preset paper``.

A preset is a YAML file in this package, applied over the defaults and under
everything else (a ``--config`` file, component options, ``--set``). Its first
comment line is its description in ``natkit list presets``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from natkit.errors import ConfigError, did_you_mean, format_choices
from natkit.yamlio import safe_yaml


def _files() -> dict[str, Any]:
    folder = resources.files(__name__)
    return {item.name.removesuffix(".yaml"): item for item in folder.iterdir()
            if item.name.endswith(".yaml")}


def names() -> list[str]:
    """The shipped presets, sorted."""
    return sorted(_files())


def text(name: str) -> str:
    """The YAML text of preset ``name``; an unknown name is a one-line ConfigError."""
    files = _files()
    if name not in files:
        raise ConfigError(f"--preset: unknown preset '{name}'{did_you_mean(name, files)}; "
                          f"valid: {format_choices(files)}")
    return files[name].read_text()


def load(name: str) -> dict[str, Any]:
    """Preset ``name`` as a config layer (a plain dict)."""

    data = safe_yaml(text(name), f"preset '{name}'")
    return data or {}


def describe(name: str) -> str:
    """The first line of the preset's leading comment."""
    for line in text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def as_overrides(name: str) -> list[str]:
    """Preset ``name`` as ``key=value`` texts (dotted keys, YAML values), as ``--set`` takes them."""
    import yaml

    def walk(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [text for key, item in value.items() for text in walk(item, f"{prefix}{key}.")]
        flow = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        return [f"{prefix[:-1]}={flow.removesuffix('...').strip()}"]

    layer = load(name)
    return walk(layer, "") if layer else []
