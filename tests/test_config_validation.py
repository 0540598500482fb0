"""Validation of what a person types (issue 14): one line naming the field, before any training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import pytest
from typer.testing import CliRunner

from natkit import config
from natkit.cli import app
from natkit.errors import ConfigError, NatkitError
from natkit.testing import TINY
from natkit.values import Bounds, OptionError, coerce

runner = CliRunner()


def sets(*texts: str) -> list[str]:
    return [a for t in texts for a in ("--set", t)]


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ---------------------------------------------------------------- 1. tracebacks become one line


@pytest.mark.parametrize("setting, message", [
    ("head.hidden=[-1]", "head.hidden: expected a value >= 1, got -1"),
    ("head.hidden=[0, 8]", "head.hidden: expected a value >= 1, got 0"),
    ("augment.crop_ratio=[0,1]", "augment.crop_ratio: expected a value > 0.0, got 0.0"),
    ("augment.crop_ratio=[2, 1]", "augment.crop_ratio: expected [low, high] with low <= high"),
    ("augment.crop_ratio=[1]", "augment.crop_ratio: expected a list of 2 values"),
    ("eval.mlp_weight_decay=[-1]", "eval.mlp_weight_decay: expected a value >= 0.0, got -1.0"),
    ("eval.linear_weight_decay=[]", "eval.linear_weight_decay: expected at least 1 value"),
    ("eval.knn_k=[0]", "eval.knn_k: expected a value >= 1, got 0"),
])
def test_values_that_crashed_mid_run_now_fail_before_training(host, tmp_path, setting, message):
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), *sets(*TINY, setting)])
    assert message in one_line_error(result)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing was trained


def test_pretrained_timm_weights_are_refused_before_timm_touches_the_network(host, monkeypatch):
    import timm

    def no_network(*args, **kwargs):
        raise AssertionError("timm was asked to build the model")

    monkeypatch.setattr(timm, "create_model", no_network)
    result = runner.invoke(app, ["run", "--backbone", "timm:resnet18",
                                 *sets(*TINY, "backbone.pretrained=true")])
    line = one_line_error(result)
    assert "backbone.pretrained" in line
    assert "cannot download weights" in line and "random-init" in line


@pytest.mark.parametrize("setting, message", [
    ("backbone.depth=3", "backbone.depth: backbone 'timm:resnet18': timm rejected the options "
                         "['depth']"),
    ("backbone.drop_rate=abc", "backbone.drop_rate: backbone 'timm:resnet18': drop_rate: "
                               "expected a number, got 'abc'"),
    ("backbone.drop_rate=true", "backbone.drop_rate: backbone 'timm:resnet18': drop_rate: "
                                "expected a number, got True"),
    ("backbone.drop_rate={a: 1}", "backbone.drop_rate: expected a plain value"),
    ("backbone.drop_rate=.nan", "backbone.drop_rate: expected a finite number"),
    ("backbone.num_classes=10", "backbone.num_classes: backbone 'timm:resnet18': num_classes: "
                                "set by natkit"),
    ("backbone.checkpoint_path=w.pt", "backbone.checkpoint_path: backbone 'timm:resnet18'"),
    ("backbone.name=timm:resnet181", "backbone.name: unknown timm model 'resnet181'"),
])
def test_timm_options_are_checked_when_the_config_is_resolved(host, setting, message):
    result = runner.invoke(app, ["config", *sets("backbone.name=timm:resnet18", setting)])
    assert message in one_line_error(result)


def test_timm_options_that_type_check_are_converted(host):
    c = config.build(overrides=["backbone.name=timm:resnet18", "backbone.drop_rate=1e-1",
                                "backbone.pretrained=false"])
    assert c.backbone == {"name": "timm:resnet18", "drop_rate": 0.1, "pretrained": False}


def test_a_timm_option_refused_only_by_the_real_build_fails_before_training(
        host, tmp_path, monkeypatch):
    from natkit.backbones import timm_backbone

    # a model that cannot be built on the meta device: only the real build can tell
    monkeypatch.setattr(timm_backbone, "_refused_on_meta", lambda name, options: (None, {}))
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--backbone",
                                 "timm:resnet18",
                                 *sets(*[t for t in TINY if not t.startswith("backbone.")],
                                       "backbone.depth=3")])
    line = one_line_error(result)
    assert "backbone.depth: backbone 'timm:resnet18': timm rejected the options ['depth']" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ---------------------------------------------------------------- 2. nonsense is refused


@pytest.mark.parametrize("setting, message", [
    ("augment.crop_scale=[-0.5, 1]", "augment.crop_scale: expected a value > 0.0, got -0.5"),
    ("augment.crop_scale=[0.5, 2]", "augment.crop_scale: expected a value <= 1.0, got 2.0"),
    ("data.noise=.nan", "data.noise: expected a finite number, got nan"),
    ("data.noise=-0.1", "data.noise: dataset 'shapes': noise must be >= 0.0, got -0.1"),
    ("data.scale=[0.9, 0.5]", "data.scale: expected [low, high] with low <= high"),
    ("train.lr=.nan", "train.lr: expected a finite number, got nan"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("method.cache_targets_mb=.inf", "method.cache_targets_mb: expected a finite number"),
    # a number or 'auto': each kind of value is told what its own kind expects
    ("method.cache_targets_mb=-1", "method.cache_targets_mb: method 'nat': cache_targets_mb "
                                   "must be >= 0.0, got -1.0"),
    ("method.cache_targets_mb=automatic", "method.cache_targets_mb: expected one of 'auto', "
                                          "got 'automatic'"),
    ("eval.knn_temperature=-.inf", "eval.knn_temperature: expected a finite number"),
    ("eval.mlp_weight_decay=[.nan]", "eval.mlp_weight_decay: expected a finite number"),
    ("train.epochs=1000000000000000000000000000000", "train.epochs: expected an integer of at "
                                                     "most 64 bits"),
])
def test_nonsense_is_refused(host, setting, message):
    assert message in one_line_error(runner.invoke(app, ["config", *sets(setting)]))


@pytest.mark.parametrize("section, name, option", [
    ("solver", "sinkhorn", "reg"), ("preprocess", "highpass", "sigma"),
    ("data", "digits", "test_fraction"),
])
def test_nan_is_refused_for_float_options_without_bounds(host, section, name, option):
    result = runner.invoke(app, ["config", *sets(f"{section}.name={name}",
                                                 f"{section}.{option}=.nan")])
    assert f"{section}.{option}: expected a finite number, got nan" in one_line_error(result)


def test_augmentation_refuses_bad_ranges_when_called_directly():
    import torch

    from natkit.augment import random_resized_crop

    images, gen = torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0)
    for scale, ratio in [((-0.5, 1.0), (0.75, 1.33)), ((0.5, 1.0), (0.0, 1.0)),
                         ((0.5, float("nan")), (0.75, 1.33))]:
        with pytest.raises(ValueError, match="must be \\[low, high\\]"):
            random_resized_crop(images, gen, scale, ratio)


# ---------------------------------------------------------------- 3. YAML alias bombs

BOMB = """\
backbone:
  name: "timm:resnet18"
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _limit_memory() -> None:  # runs in the child: 6 GiB of address space at most
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))


def test_an_alias_bomb_is_refused_quickly_without_being_expanded(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB.encode()) < 600  # a few hundred bytes that would expand to 9**9 strings
    env = {**os.environ, "NATKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "natkit", "config", "--config", str(bomb)],
                          capture_output=True, text=True, timeout=90, env=env,
                          cwd=Path(__file__).resolve().parents[1],
                          preexec_fn=_limit_memory if sys.platform == "linux" else None)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    assert f"config file '{bomb}'" in lines[0] and "alias" in lines[0]
    assert time.monotonic() - started < 30


def test_small_aliases_and_merge_keys_still_work(host, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval: {mlp_weight_decay: &wd [0.001, 0.01], linear_weight_decay: *wd}\n"
                    "head: {hidden: &h [16]}\n"
                    "backbone: {name: alexnet, fc: *h}\n"
                    "data: {<<: &d {name: shapes, num_train: 64}, num_test: 40}\n")
    c = config.build(path)
    assert c.eval.linear_weight_decay == c.eval.mlp_weight_decay == [0.001, 0.01]
    assert c.backbone["fc"] == c.head.hidden == [16]
    assert (c.data["num_train"], c.data["num_test"]) == (64, 40)


@pytest.mark.parametrize("text, message", [
    ("a: &a [*a]\n", "recursive aliases are refused"),
    ("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than"),
    ("a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
        f"{x}: &{x} [{', '.join([f'*{p}'] * 10)}]\n" for p, x in zip("abcd", "bcde", strict=True)),
     "aliases would expand to more than"),
])
def test_bad_yaml_structures_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        config.load_yaml(path)
    assert "c.yaml'" in str(info.value) and "\n" not in str(info.value)


def test_an_alias_bomb_in_a_set_value_is_refused():
    layers = ["&a [1,1,1,1,1,1,1,1,1,1]"] + [
        f"&{x} [{','.join([f'*{p}'] * 10)}]" for p, x in zip("abcd", "bcde", strict=True)]
    with pytest.raises(ConfigError, match="^--set 'backbone.x=.*': YAML aliases would expand"):
        config.parse_override(f"backbone.x=[{', '.join(layers)}]")


# ---------------------------------------------------------------- 4. numbers as people type them


@pytest.mark.parametrize("setting, attr, expected", [
    ("train.lr=1e-3", ("train", "lr"), 0.001),
    ("train.lr=1E-3", ("train", "lr"), 0.001),
    ("train.lr=.5", ("train", "lr"), 0.5),
    ("train.lr=5.", ("train", "lr"), 5.0),
    ("train.weight_decay=2e-4", ("train", "weight_decay"), 0.0002),
    ("method.cache_targets_mb=1E3", ("method", "cache_targets_mb"), 1000.0),
    ("train.epochs=1e3", ("train", "epochs"), 1000),
    ("train.epochs=1_000", ("train", "epochs"), 1000),
    ("train.epochs=1.5e3", ("train", "epochs"), 1500),
    ("train.epochs=20.0", ("train", "epochs"), 20),
])
def test_numbers_are_read_as_people_write_them(host, setting, attr, expected):
    section = getattr(config.build(overrides=[setting]), attr[0])
    value = section[attr[1]] if isinstance(section, dict) else getattr(section, attr[1])
    assert value == expected and type(value) is type(expected)


def test_number_texts_in_lists_and_negative_exponents():
    assert coerce("-2e-4", float, "x") == -0.0002
    assert coerce(["1e-5", "1E-3"], list[float], "x") == [1e-5, 1e-3]
    assert coerce("1_000.5", float, "x") == 1000.5


@pytest.mark.parametrize("setting, message", [
    ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
    ("train.epochs=1e-3", "train.epochs: expected an integer, got '1e-3'"),
    ("train.lr=1e-3x", "train.lr: expected a number, got '1e-3x'"),
    ("train.lr=1e999", "train.lr: expected a finite number"),
    ("train.epochs=1e400", "train.epochs: expected an integer of at most 64 bits"),
    ("data.seed=-1", "data.seed: dataset 'shapes': seed must be >= 0, got -1"),
    ("data.num_train=0", "data.num_train: dataset 'shapes': num_train must be >= 1, got 0"),
    ("targets.k=3", "targets.k: targets 'sphere' has no option 'k'"),
    ("solver.name=hungarain", "unknown solver 'hungarain' (did you mean 'hungarian'?)"),
    ("solver.name=3", "solver.name: expected a string, got 3"),
])
def test_every_validation_error_names_the_dotted_field(host, setting, message):
    with pytest.raises(NatkitError) as info:
        config.build(overrides=[setting])
    assert message in str(info.value)


def test_factory_option_errors_name_the_field(host):
    import natkit

    with pytest.raises(ConfigError, match="^targets.k: targets 'basis': k must be between 1 and "
                                          "dim=4, got k=5$"):
        natkit.create_targets("basis", dim=4, k=5)
    with pytest.raises(ConfigError, match="^targets.dim: targets 'sphere': dim must be >= 1"):
        natkit.create_targets("sphere", dim=0)


def test_annotated_bounds_of_a_plugin_factory_are_checked(host):
    def create(*, width: Annotated[int, Bounds(ge=1, le=64)] = 8,
               rates: Annotated[list[float], Bounds(gt=0.0, min_len=1)] = (0.1,)) -> dict:
        if width == 7:
            raise OptionError("width", "width 7 is unlucky")
        return {"width": width}

    host.registry("solver").add("demo", create, plugin="demo")
    assert config.build(overrides=["solver.name=demo", "solver.width=1e1"]).solver["width"] == 10
    for setting, message in [("solver.width=65", "solver.width: solver 'demo': width must be <= 64"),
                             ("solver.rates=[]", "solver.rates: expected at least 1 value"),
                             ("solver.rates=[0]", "solver.rates: solver 'demo': rates must be > 0.0"),
                             ("solver.width=7", "solver.width: solver 'demo': width 7 is unlucky")]:
        with pytest.raises(ConfigError, match=message.replace("[", "\\[")):
            config.build(overrides=["solver.name=demo", setting])


# ---------------------------------------------------------------- 5. switching components keeps dim


def test_switching_targets_keeps_the_target_dimension(host):
    assert config.build().targets["dim"] == 32
    assert config.build(targets="basis").targets["dim"] == 32  # not basis's own 128
    assert config.build(overrides=["targets.name=basis"]).targets == {
        "name": "basis", "dim": 32, "k": None, "seed": None}


def test_a_dimension_the_user_gave_survives_a_switch_in_a_later_layer(host, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("targets: {name: sphere, dim: 64, seed: 5}\n")
    c = config.build(path, targets="basis")
    assert (c.targets["dim"], c.targets["seed"]) == (64, 5)
    c = config.build(path, ["targets.dim=16"], targets="basis")  # a later layer still wins
    assert c.targets["dim"] == 16


def test_only_shared_options_the_new_component_takes_are_kept(host, tmp_path):
    def create(*, k: int = 3) -> object:  # a target distribution without dim
        return object()

    host.registry("targets").add("nodim", create, plugin="demo")
    path = tmp_path / "c.yaml"
    path.write_text("targets: {name: basis, dim: 8, k: 4}\nsolver: {name: sinkhorn, "
                    "num_iter_max: 5}\n")
    data = config.merge(config.merge(config.defaults(), config.load_yaml(path)),
                        {"targets": {"name": "nodim"}, "solver": {"name": "emd"}})
    assert data["targets"] == {"name": "nodim"}  # k is basis's own; dim is not taken
    assert data["solver"] == {"name": "emd"}  # solvers share nothing: num_iter_max is dropped


@pytest.mark.parametrize("text", ["seed\n", "a\nb=1", "train.lr=[\n", "data.x\ny=1"])
def test_control_characters_in_user_text_stay_on_one_line(host, text):
    with pytest.raises(NatkitError) as info:
        config.build(overrides=[text])
    assert "\n" not in str(info.value) and "\\n" in str(info.value)
