"""YAML text as natkit reads it: config files and ``--set key=value`` overrides, safely.

Only ``yaml.SafeLoader`` is used, and a document is refused before it is
expanded when its aliases would blow it up (a "billion laughs" bomb) or it
nests too deeply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from natkit.errors import ConfigError, clip

# YAML documents: aliases may add at most this many nodes once expanded; nesting at most this deep.
ALIAS_EXPANSION_LIMIT = 10_000
MAX_YAML_DEPTH = 64


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader); the top level must be a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file '{echo(path)}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{echo(path)}' cannot be read: {exc}") from None
    try:
        data = safe_yaml(text, f"config file '{echo(path)}'")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file '{echo(path)}'{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{echo(path)}': expected a mapping of keys, got "
                          f"{type(data).__name__}")
    return data


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load``, refusing alias bombs and deep nesting before building anything.

    The document is composed into YAML nodes first, where an alias is a shared
    reference, so nothing is expanded; its expanded size is then counted (each
    node once, by memo) and the document refused if its aliases would add more than
    :data:`ALIAS_EXPANSION_LIMIT` nodes or it nests deeper than :data:`MAX_YAML_DEPTH`.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{source}: YAML nested more than {MAX_YAML_DEPTH} levels deep") \
                from None
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    sizes: dict[int, int] = {}  # id(node) -> nodes it stands for once aliases are expanded
    distinct: set[int] = set()

    def size(node: yaml.Node, depth: int, open_nodes: frozenset[int]) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{source}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"{source}: a YAML alias refers to the node that contains it; "
                              "recursive aliases are refused")
        distinct.add(key)
        inner = open_nodes | {key}
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        total = 1 + sum(size(child, depth + 1, inner) for child in children)
        if total > len(distinct) + ALIAS_EXPANSION_LIMIT:  # what aliases add, beyond the text
            raise ConfigError(f"{source}: YAML aliases would expand to more than "
                              f"{ALIAS_EXPANSION_LIMIT} extra values (an alias bomb?); refused without "
                              "expanding them: write the values out")
        sizes[key] = total
        return total

    size(root, 0, frozenset())


def echo(text: Any) -> str:
    """User text inside a one-line message: control characters (newlines) escaped, long text cut."""
    return clip(text)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``'train.lr=0.1'`` into ``{'train': {'lr': 0.1}}`` (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set '{echo(text)}': expected key=value, e.g. train.lr=0.1")
    parts = key.split(".")
    if any(not p.strip() or p != p.strip() for p in parts):
        raise ConfigError(f"--set '{echo(text)}': '{echo(key)}' is not a dotted key such as "
                          "train.lr")
    try:
        value = safe_yaml(raw, f"--set '{echo(text)}'") if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set '{echo(text)}': '{echo(raw)}' is not a valid YAML value") from None
    for part in reversed(parts):
        value = {part: value}
    return value


