"""Builders shared by training, evaluation, export and the benchmarks.

They turn a resolved config into the pieces of a run: its device, dataset
splits, training method and network (exactly as initialised by the run's
seed), and read back the config a run directory holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import natkit
from natkit import config as cfg
from natkit.checkpoint import CONFIG
from natkit.distributed import SINGLE, Comm
from natkit.errors import CheckpointError, ConfigError, DataError
from natkit.methods import Method, MethodContext
from natkit.model import Network, ProjectionHead
from natkit.plugins import registry
from natkit.seeding import seed_for


def pick_device(spec: str) -> torch.device:
    """Resolve ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` to an available device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device: '{spec}' is not a device; expected auto, cpu, cuda or cuda:N") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{spec}' requested but CUDA is not available here; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: '{spec}' is not supported; expected auto, cpu, cuda or cuda:N")
    return device


def load_dataset(config: cfg.Config, split: str) -> Any:
    """One split of the configured dataset."""
    spec = config.data
    dataset = natkit.create_dataset(spec["name"], split=split, **cfg.component_options(spec))
    if len(dataset) == 0:
        raise DataError(f"data: the '{split}' split of {spec['name']} is empty")
    return dataset


def build_method(config: cfg.Config, dataset: Any, device: torch.device,
                 comm: Comm = SINGLE) -> Method:
    """The configured training method for ``dataset`` (the training split).

    It is built under its own seed, outside the global generator, so a method
    that creates modules neither depends on nor disturbs the network's initialisation.
    """
    spec = config.method
    context = MethodContext(config=config, num_images=len(dataset),
                            labels=dataset.labels.to(torch.int64),
                            num_classes=int(dataset.num_classes), device=device, comm=comm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(config.seed, "method"))
        method = registry("method").create(spec["name"], context=context,
                                           **cfg.component_options(spec))
    if not isinstance(method, Method):
        raise ConfigError(f"method: '{spec['name']}' built a {type(method).__name__}, not a "
                          "natkit.methods.Method")
    return method


def build_network(config: cfg.Config, dataset: Any, method: Method) -> Network:
    """Preprocessor, backbone and head for ``dataset``'s channels and ``method``'s outputs.

    With ``augment.crop_size`` the network is built for crops of that size and
    centre-crops larger inputs (see :class:`~natkit.model.Network`).
    """
    pre_spec, bb_spec = config.preprocess, config.backbone
    size = input_size(config, dataset)  # checks augment.crop_size against the images
    preprocess = natkit.create_preprocess(pre_spec["name"], in_channels=dataset.channels,
                                          **cfg.component_options(pre_spec))
    backbone = natkit.create_backbone(bb_spec["name"], in_chans=preprocess.out_channels,
                                      image_size=size,
                                      **cfg.component_options(bb_spec))
    hidden = config.head.hidden if config.head.hidden is not None else backbone.default_head
    head = ProjectionHead(backbone.num_features, hidden, method.head_dim,
                          config.head.dropout, config.head.batchnorm,
                          config.head.dropout_where)
    return Network(preprocess, backbone, head, method.normalize,
                   input_size=config.augment.crop_size)


def input_size(config: cfg.Config, dataset: Any) -> int:
    """The side of the network's input: ``augment.crop_size``, else the dataset's images.

    Refuses (ConfigError) a crop larger than the images it is taken from.
    """
    crop, size = config.augment.crop_size, int(dataset.image_size)
    if crop is None:
        return size
    if crop > size:
        raise ConfigError(f"augment.crop_size: {crop} is larger than the {size} px images of "
                          f"data '{config.data['name']}'; set it to at most {size} or raise "
                          "data.image_size")
    return crop


def initial_network(config: cfg.Config, dataset: Any, method: Method | None = None) -> Network:
    """The network exactly as a run with this config starts (its random initialisation)."""
    if method is None:
        method = build_method(config, dataset, torch.device("cpu"))
    torch.manual_seed(seed_for(config.seed, "init"))
    return build_network(config, dataset, method)


def read_run_config(run_dir: Path) -> cfg.Config:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist")
    if not path.is_file():
        raise CheckpointError(f"'{run_dir}' is not a natkit run directory (no {CONFIG})")
    return cfg.resolve(upgrade_run_config(cfg.load_yaml(path)))


def upgrade_run_config(data: dict[str, Any]) -> dict[str, Any]:
    """A run's config as this natkit reads it: 0.1's ``mode``, ``nat`` and ``supervised`` keys
    become the ``method`` section, so older runs can still be evaluated and exported."""
    if not any(key in data for key in ("mode", "nat", "supervised")) or "method" in data:
        return data
    data = dict(data)
    mode = data.pop("mode", "nat")
    nat, supervised = data.pop("nat", None) or {}, data.pop("supervised", None) or {}
    data["method"] = {"name": mode, **(nat if mode == "nat" else supervised)}
    return data
