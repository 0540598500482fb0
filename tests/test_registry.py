"""Registries: names, did-you-mean, keyword checks, patterns and type coercion."""

from __future__ import annotations

import pytest

import natkit
from natkit.errors import ConfigError, PluginError, UnknownComponentError
from natkit.registry import KINDS, Registry


def make_registry() -> Registry:
    reg = Registry("solver")

    def fast(*, tol: float = 1e-3, rounds: int = 10, mode: str = "a") -> dict:
        """A fake solver factory."""
        return {"tol": tol, "rounds": rounds, "mode": mode}

    reg.add("fast", fast, plugin="demo")
    reg.add("fancy", fast, plugin="demo")
    return reg


def test_unknown_name_lists_valid_names_and_suggests_the_closest():
    with pytest.raises(UnknownComponentError) as info:
        make_registry().create("fastt")
    message = str(info.value)
    assert "unknown solver 'fastt'" in message
    assert "did you mean 'fast'" in message
    assert "valid: fancy, fast" in message
    assert "\n" not in message


def test_unknown_keyword_names_the_valid_parameters():
    with pytest.raises(ConfigError) as info:
        make_registry().create("fast", tool=1.0)
    message = str(info.value)
    assert "has no parameter 'tool'" in message
    assert "did you mean 'tol'" in message
    assert "mode, rounds, tol" in message


def test_create_drops_none_and_coerces_ints_to_floats():
    built = make_registry().create("fast", tol=1, rounds=None)
    assert built == {"tol": 1.0, "rounds": 10, "mode": "a"}
    assert isinstance(built["tol"], float)


@pytest.mark.parametrize("kwargs, expected", [
    ({"rounds": 2.5}, "expected an integer"),
    ({"rounds": True}, "expected an integer"),
    ({"tol": "small"}, "expected a number"),
    ({"mode": 3}, "expected a string"),
])
def test_wrong_types_are_reported_with_the_parameter(kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        make_registry().create("fast", **kwargs)


def test_patterns_and_provenance():
    reg = make_registry()
    assert reg.names("fa*") == ["fancy", "fast"]
    assert reg.names("fan*") == ["fancy"]
    assert {e.plugin for e in reg.entries()} == {"demo"}


def test_duplicate_and_invalid_names_are_plugin_errors():
    reg = make_registry()
    with pytest.raises(PluginError, match="already registered by plugin 'demo'"):
        reg.add("fast", lambda: None, plugin="other")
    with pytest.raises(PluginError, match="invalid solver name"):
        reg.add("a:b", lambda: None, plugin="other")


def test_prefix_entries_take_any_suffix():
    reg = Registry("backbone")
    reg.add("zoo", lambda model, *, width=1: (model, width), plugin="demo", prefix=True)
    assert reg.create("zoo:lion", width=3) == ("lion", 3)
    assert reg.names() == ["zoo:<name>"]
    with pytest.raises(UnknownComponentError, match="expected a name after 'zoo:'"):
        reg.create("zoo:")


def test_factory_value_errors_become_config_errors(host):
    with pytest.raises(ConfigError, match="targets 'basis': k must be between 1 and dim=4"):
        natkit.create_targets("basis", dim=4, k=5)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_builtins_and_accepts_plural_names(host, kind):
    names = natkit.list_components(kind)
    assert names, kind
    plural = {"backbone": "backbones", "solver": "solvers", "preprocess": "preprocessors",
              "dataset": "datasets", "targets": "targets", "method": "methods"}[kind]
    assert natkit.list_components(plural) == names


def test_builtin_names(host):
    assert natkit.list_components("solver") == ["auction", "emd", "greedy", "hungarian", "sinkhorn"]
    assert natkit.list_components("targets") == ["basis", "sphere"]
    assert natkit.list_components("methods") == ["nat", "supervised"]
    assert natkit.list_components("preprocess") == ["clean", "highpass", "sobel"]
    assert natkit.list_components("backbone") == ["alexnet", "timm:<name>"]
    assert natkit.list_components("dataset", "s*") == ["shapes", "shards", "stl10"]


def test_unknown_kind(host):
    with pytest.raises(UnknownComponentError, match="unknown component kind 'widget'"):
        natkit.list_components("widget")
