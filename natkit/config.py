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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from natkit.errors import (
    ConfigError,
    NatkitError,
    UnknownComponentError,
    did_you_mean,
    format_choices,
)
from natkit.kinds import TABLE
from natkit.plugins import registry
from natkit.registry import CONTEXT_PARAMS, SHARED_PARAMS, Bounds, coerce, shown

# config section -> registry kind, from the one table of kinds
COMPONENT_SECTIONS: dict[str, str] = {kind.section: kind.name for kind in TABLE}


# Keys of earlier natkit versions, and what took their place (for a one-line hint).
REPLACED_KEYS = {
    "mode": "method.name (mode: supervised is now method: {name: supervised})",
    "nat": "options of the nat method (nat.permute_every is now method.permute_every)",
    "supervised": "options of the supervised method (supervised.loss is now method.loss)",
}

# YAML documents: aliases may add at most this many nodes once expanded; nesting at most this deep.
ALIAS_EXPANSION_LIMIT = 10_000
MAX_YAML_DEPTH = 64


def option(default: Any, help: str, **checks: Any) -> Any:
    """A config field with help text and optional :class:`~natkit.registry.Bounds`.

    ``gt``, ``ge``, ``lt``, ``le`` bound a number or each element of a list;
    ``length``, ``min_len``, ``max_len`` and ``ordered`` constrain a list.
    """
    metadata = {"help": help, **checks, "bounds": Bounds(**checks) if checks else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def field_bounds(f: dataclasses.Field) -> Bounds | None:
    """The bounds declared on a config field with :func:`option`."""
    return f.metadata.get("bounds")


@dataclass
class HeadConfig:
    """The projection head between the backbone and the targets (or classes)."""

    hidden: list[int] | None = option(
        [], "hidden widths of the fc layers; [] is a linear projection (the tuned small-scale "
            "default); null takes the backbone's own (AlexNet: the paper's fc6-fc7, 4096-4096)",
        ge=1)
    dropout: float = option(0.5, "dropout rate of the hidden fc layers (see dropout_where)",
                            ge=0.0, lt=1.0)
    dropout_where: Literal["before_each", "between"] = option(
        "before_each", "before_each: dropout before every hidden fc layer (torchvision's "
                       "AlexNet); between: only between hidden layers, i.e. once after fc6 "
                       "(the authors' alexnet.lua)")
    batchnorm: bool = option(True, "BatchNorm after each hidden fc layer (the authors' code)")


@dataclass
class AugmentConfig:
    """Augmentations applied on the device to every training batch."""

    crop_size: int | None = option(
        None, "null: random resized crops (crop_scale, crop_ratio) resized back to the loaded "
              "size; a number: random crop_size x crop_size crops of the loaded image, not "
              "resized (the authors' 224 of 256), and the network sees the centre crop at "
              "evaluation; at most the dataset's image size", ge=1)
    crop_scale: list[float] = option(
        [0.5, 1.0], "random resized crop: range [low, high] of the crop's area as a fraction of "
                    "the image (unused when crop_size is set)", gt=0.0, le=1.0, length=2,
        ordered=True)
    crop_ratio: list[float] = option([0.75, 1.3333], "random resized crop: aspect-ratio range "
                                                     "[low, high] (unused when crop_size is set)",
                                     gt=0.0, length=2, ordered=True)
    flip: bool = option(True, "random horizontal flips")


@dataclass
class TrainConfig:
    """Optimisation: plain SGD with the paper's step-size schedule."""

    epochs: int = option(40, "training epochs", ge=1)
    batch_size: int = option(256, "images per batch (and the size of each assignment problem)",
                             ge=2)
    lr: float = option(0.05, "base step size l0", gt=0.0)
    momentum: float = option(0.9, "SGD momentum (the paper: 0)", ge=0.0, lt=1.0)
    weight_decay: float = option(5e-4, "L2 weight decay", ge=0.0)
    warmup_steps: int = option(50, "linear warm-up from 0 to lr over this many steps", ge=0)
    lr_t0: int = option(
        0, "steps at constant lr (after warm-up) before the decay l0 / (1 + gamma (t - t0))", ge=0)
    lr_gamma: float = option(0.002, "decay rate gamma of l0 / (1 + gamma (t - t0)); 0 keeps lr "
                                    "constant", ge=0.0)
    split: str = option("train", "dataset split to train on (e.g. 'train+unlabeled' for stl10)")
    num_workers: int = option(0, "DataLoader worker processes (0 loads in the main process)",
                              ge=0)
    amp: bool = option(False, "bfloat16 autocast on CUDA (ignored on the CPU)")
    channels_last: bool = option(
        False, "channels-last memory format for the network and its inputs (faster convolutions "
               "on CUDA, above all with amp)")
    compile: bool = option(False, "torch.compile the network: faster CUDA steps after a one-off "
                                  "compilation")
    sync_bn: bool | None = option(
        None, "under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm), as in "
              "one process; false: per rank; null: on CUDA yes, on the CPU no (PyTorch's "
              "SyncBatchNorm needs CUDA)")
    checkpoint_every: int = option(1, "write checkpoint.pt every this many epochs", ge=1)
    keep_every: int = option(
        0, "also keep a snapshot every this many epochs (snapshots/epoch-NNNN.pt), for "
           "`natkit eval RUN --checkpoint EPOCH` and accuracy-against-epochs curves; 0 keeps none",
        ge=0)
    log_every: int = option(10, "write a metrics.jsonl record every this many steps", ge=1)


@dataclass
class EvalConfig:
    """Evaluation of frozen features against the same network at random initialisation."""

    enabled: bool = option(True, "evaluate after training")
    probes: list[Literal["linear", "mlp", "knn", "transfer"]] = option(
        ["linear", "mlp", "knn"], "probes to run: linear, mlp, knn on stored features; transfer: "
                                  "the authors' test.lua MLP on augmented crops (transfer_*)")
    layer: str = option("last", "feature tap to probe: 'last' (the pooled output, conv5 "
                                "for AlexNet) or a named tap such as conv3")
    tap_pool: int = option(2, "intermediate taps are average-pooled to this grid size", ge=1)
    val_fraction: float = option(
        0.2, "fraction of the training split held out to choose probe settings", gt=0.0, lt=1.0)
    linear_weight_decay: list[float] = option(
        [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], "L2 strengths tried by the linear probe", ge=0.0,
        min_len=1)
    linear_iterations: int = option(200, "L-BFGS iterations of the linear probe", ge=1)
    mlp_hidden: int = option(512, "hidden width of the MLP probe (the paper: 4096)", ge=1)
    mlp_weight_decay: list[float] = option([1e-5, 1e-3], "weight-decay grid of the MLP probe",
                                           ge=0.0, min_len=1)
    mlp_epochs: int = option(60, "epochs of the MLP probe", ge=1)
    knn_k: list[int] = option([1, 5, 10, 20, 50], "neighbour counts tried by the kNN probe",
                              ge=1, min_len=1)
    knn_temperature: float = option(0.07, "temperature of the kNN vote weights exp(sim / T)",
                                    gt=0.0)
    knn_normalize: list[Literal["standardize", "l2"]] = option(
        ["standardize"], "feature normalisations the kNN probe chooses from on validation before "
                         "its cosine: standardize (training mean and std), l2 (the raw features)",
        min_len=1)
    baseline: bool = option(True, "also probe the network at random initialisation "
                                  "(BatchNorm statistics recomputed on the training images)")
    plots: bool = option(True, "write loss.png, filters.png and neighbours.png")
    batch_size: int = option(256, "batch size for feature extraction and probes", ge=1)
    chunk_mb: float = option(256.0, "MiB of float32 features a probe holds at once; features "
                                    "are kept on disk (float16) and read in chunks", gt=0.0)
    # The transfer probe: the authors' test.lua (facebookresearch/noise-as-targets), an MLP on
    # frozen features of random crops recomputed every epoch, tested on 10 crops; batches of
    # eval.batch_size (test.lua -batch 256). See natkit.evaluation.streamed.
    transfer_epochs: int = option(100, "epochs of the transfer probe (test.sh -maxepoch 100; "
                                       "test.lua's own default is 1)", ge=1)
    transfer_lr: float = option(0.1, "initial learning rate of the transfer probe (test.lua -lr)",
                                gt=0.0)
    transfer_momentum: float = option(
        0.9, "momentum of the transfer probe as optimutil.lua applies it: the step follows the "
             "average m = momentum m + (1 - momentum) g (test.lua -momentum)", ge=0.0, lt=1.0)
    transfer_weight_decay: float = option(
        1e-8, "weight decay of the transfer probe: every weight but BatchNorm's and the biases "
              "is multiplied by 1 - this at every step (test.lua -weightdecay, optimutil.lua)",
        ge=0.0, lt=1.0)
    transfer_gamma: float = option(
        0.3, "decay of the transfer probe's learning rate: lr / (1 + gamma (epoch - "
             "transfer_decay_start)) from that epoch on (test.lua -gamma, onStartEpoch)", ge=0.0)
    transfer_decay_start: int = option(
        20, "epoch, counted from 0, at which the transfer probe's learning rate starts to decay "
            "(test.lua: 20)", ge=0)
    transfer_dropout: float = option(0.5, "dropout after the first hidden layer of the transfer "
                                          "MLP (test.lua -dropout)", ge=0.0, lt=1.0)
    transfer_hidden: int = option(4096, "hidden width of the transfer MLP (alexnet-specs.lua: "
                                        "4096)", ge=1)
    transfer_crops: Literal[1, 10] = option(
        10, "test crops per image of the transfer probe: 10 (centre and 4 corners, and the same "
            "of the mirror image, outputs summed; test.lua) or 1 (the centre, -testsinglecrop 1)")
    transfer_crop_fraction: float = option(
        0.875, "side of the transfer probe's crops as a fraction of the image side when the "
               "network was trained on whole images (augment.crop_size null; otherwise its crop "
               "size): the authors' 224 of 256", gt=0.0, le=1.0)


@dataclass
class Config:
    """A whole run: components, objective, optimisation and evaluation."""

    seed: int = option(0, "seed of the weights, the initial assignment, the targets, the data "
                          "order and the augmentations", ge=0)
    method: dict[str, Any] = option(
        {"name": "nat"}, "training method name and options: nat (Noise As Targets), supervised "
                         "(the labels, for the ablations), or a plugin's")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    world_size: int = option(1, "processes the run trains in: recorded by natkit from "
                                "torchrun's environment (a value given here is replaced)", ge=1)
    deterministic: bool = option(False, "use only deterministic kernels (bit-exact resumes)")
    data: dict[str, Any] = option({"name": "shapes"}, "dataset name and options")
    preprocess: dict[str, Any] = option({"name": "sobel"}, "preprocessor name and options")
    backbone: dict[str, Any] = option({"name": "alexnet", "widths": [32, 96, 192, 128, 128]},
                                      "backbone name and options")
    targets: dict[str, Any] = option({"name": "sphere", "dim": 32},
                                     "target distribution name and options")
    solver: dict[str, Any] = option({"name": "hungarian"}, "assignment solver name and options")
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-ready copy."""
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building


def defaults() -> dict[str, Any]:
    """The default config as a plain dict."""
    return Config().to_dict()


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader); the top level must be a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file '{_echo(path)}' does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{_echo(path)}' cannot be read: {exc}") from None
    try:
        data = safe_yaml(text, f"config file '{_echo(path)}'")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file '{_echo(path)}'{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{_echo(path)}': expected a mapping of keys, got "
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


def _echo(text: Any) -> str:
    """User text inside a one-line message: control characters (newlines) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``'train.lr=0.1'`` into ``{'train': {'lr': 0.1}}`` (the value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set '{_echo(text)}': expected key=value, e.g. train.lr=0.1")
    parts = key.split(".")
    if any(not p.strip() or p != p.strip() for p in parts):
        raise ConfigError(f"--set '{_echo(text)}': '{_echo(key)}' is not a dotted key such as "
                          "train.lr")
    try:
        value = safe_yaml(raw, f"--set '{_echo(text)}'") if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set '{_echo(text)}': '{_echo(raw)}' is not a valid YAML value") from None
    for part in reversed(parts):
        value = {part: value}
    return value


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
            raise ConfigError(f"unknown config key '{_echo(key)}'{did_you_mean(str(key), known)}; "
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
            raise ConfigError(f"unknown config key '{prefix}{_echo(key)}'"
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
                f"{section}.{_echo(key)}: {kind} '{name}' has no option '{_echo(key)}'"
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


def component_options(spec: dict[str, Any]) -> dict[str, Any]:
    """A component section without its name: the keyword arguments for its factory."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "name"}


def dump(config: Config) -> str:
    """The config as YAML text."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None)


def difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += difference(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys
