"""Configs: layering, dotted overrides, component options, validation and one-line errors."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from natkit import config
from natkit.errors import ConfigError, NatkitError


def test_defaults_resolve_with_every_component_option_filled(host):
    c = config.build()
    assert c.method == {"name": "nat", "permute_every": 3, "cache_targets_mb": "auto",
                        "loss_reduction": "mean"}
    assert c.data["name"] == "shapes"
    assert c.solver == {"name": "hungarian", "quantize": None}
    assert c.targets["dim"] == 32 and "seed" in c.targets
    assert c.backbone["stem"] == "auto"  # the factory's default, written into the config
    assert config.resolve(yaml.safe_load(config.dump(c))) == c  # the dump round-trips


def test_layers_apply_in_order_file_then_names_then_overrides(host, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0.2, epochs: 7}\nsolver: {name: sinkhorn, reg: 0.1}\n")
    c = config.build(path, ["train.lr=0.3"], targets="basis")
    assert (c.train.lr, c.train.epochs) == (0.3, 7)
    assert c.solver["name"] == "sinkhorn" and c.solver["reg"] == 0.1
    assert c.targets["name"] == "basis"


def test_a_new_component_name_drops_the_default_options_but_keeps_the_users(host):
    c = config.build(overrides=["backbone.name=timm:resnet18"])
    assert "widths" not in c.backbone  # alexnet's defaults do not leak into timm
    c = config.build(overrides=["targets.k=5", "targets.name=basis"])  # order does not matter
    assert c.targets["k"] == 5


def test_override_values_are_yaml(host):
    c = config.build(overrides=["eval.knn_k=[3, 7]", "head.hidden=[]", "train.amp=true",
                                "method.permute_every=0"])
    assert c.eval.knn_k == [3, 7] and c.head.hidden == [] and c.train.amp is True
    assert c.method["permute_every"] == 0


@pytest.mark.parametrize("overrides, message", [
    (["train.lr=0"], "train.lr: expected a value > 0.0, got 0.0"),
    (["train.lr=-1"], "train.lr: expected a value > 0.0"),
    (["targets.dim=0"], "dim must be >= 1"),
    (["train.batch_size=1"], "train.batch_size: expected a value >= 2, got 1"),
    (["method.permute_every=-1"], "method.permute_every: method 'nat': permute_every must be >= 0"),
    (["targets.name=basis", "targets.k=300"], "targets.k: targets 'basis': k must be between 1 and dim=32"),
    (["train.epochs=two"], "train.epochs: expected an integer, got 'two'"),
    (["train.lrr=0.1"], "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["optimizer.lr=0.1"], "unknown config key 'optimizer'"),
    (["solver.name=hungarain"], "unknown solver 'hungarain' (did you mean 'hungarian'?)"),
    (["solver.tol=1"], "solver.tol: solver 'hungarian' has no option 'tol'"),
    (["backbone.in_chans=3"], "backbone.in_chans: set by natkit"),
    (["method=unsupervised"],
     "unknown method 'unsupervised' (did you mean 'supervised'?); valid: nat, supervised"),
    (["mode=supervised"], "config key 'mode' was replaced by method.name"),
    (["method.loss=square"], "method.loss: method 'nat' has no option 'loss'"),
    (["method=supervised", "method.loss=hinge"], "method.loss: expected one of 'softmax', 'square'"),
    (["eval.probes=[svm]"], "eval.probes: expected one of 'linear', 'mlp', 'knn'"),
    (["train.lr"], "--set 'train.lr': expected key=value"),
    (["=3"], "expected key=value"),
    (["train..lr=1"], "is not a dotted key"),
    (["train.lr=[1"], "is not a valid YAML value"),
    (["train=3"], "train: expected a mapping, got 3"),
])
def test_bad_values_give_one_line_errors_naming_the_field(host, overrides, message):
    with pytest.raises(NatkitError) as info:
        config.build(overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files_are_named(host, tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml' does not exist"):
        config.build(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match="broken.yaml' line"):
        config.build(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys, got list"):
        config.build(listy)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="unsafe.yaml"):
        config.build(unsafe)  # safe_load refuses to construct Python objects


def test_difference_lists_changed_dotted_keys(host):
    a = config.build().to_dict()
    b = config.build(overrides=["train.lr=0.2", "solver.name=greedy"]).to_dict()
    assert config.difference(a, b) == ["solver.name", "train.lr"]


KEYS = st.sampled_from(["seed", "mode", "train.lr", "train.epochs", "targets.dim", "targets.k",
                        "solver.name", "solver.reg", "data.num_train", "eval.knn_k",
                        "augment.crop_scale", "method.permute_every", "head.hidden", "bogus.key",
                        "train", "targets.name", ""])
VALUES = st.one_of(st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=8),
                   st.sampled_from(["[1, 2]", "[", "{a: 1}", "null", "true", "basis", "sinkhorn",
                                    "- x", "!!python/name:os.system", "''", "1e-3"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4), st.booleans())
def test_property_any_override_gives_a_valid_config_or_a_clean_error(pairs, with_equals):
    from natkit.plugins import PluginHost, reset_host

    old = reset_host(PluginHost(autoload=False))
    try:
        texts = [f"{k}={v}" if with_equals else f"{k}{v}" for k, v in pairs]
        try:
            c = config.build(overrides=texts)
        except NatkitError as exc:
            assert "\n" not in str(exc) and str(exc)
        else:
            assert config.resolve(yaml.safe_load(config.dump(c))) == c
    finally:
        reset_host(old)
