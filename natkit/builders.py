"""Builders shared by training, evaluation, export and the benchmarks.

They turn a resolved config into the pieces of a run: its device (and the
backends' determinism flags), dataset splits, training method, network (exactly
as initialised by the run's seed, then wrapped for several ranks or compiled)
and optimizer, and read back the config a run directory holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from natkit import config as cfg
from natkit.checkpoint import CONFIG
from natkit.distributed import SINGLE, Comm
from natkit.errors import CheckpointError, ConfigError, DataError, clip
from natkit.ghostbn import ghost_batchnorm
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
        raise ConfigError(f"device: '{clip(spec)}' is not a device; expected auto, cpu, cuda or cuda:N") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{clip(spec)}' requested but CUDA is not available here; use cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: '{clip(spec)}' is not supported; expected auto, cpu, cuda or cuda:N")
    return device


def create_component(kind: str, name: str, **options: Any) -> Any:
    """Build a registered component of ``kind`` (what a method's context creates through)."""
    return registry(kind).create(name, **options)


def run_device(config: cfg.Config, comm: Comm = SINGLE) -> torch.device:
    """The device a run trains on, with the backends set up as ``config.deterministic`` asks.

    Under torchrun each rank trains on its LOCAL_RANK's GPU, or the CPU.
    """
    if config.world_size != comm.world_size:
        raise ConfigError(f"world_size: the config says {config.world_size} but this run has "
                          f"{comm.world_size} process(es); launch it with torchrun "
                          f"--nproc_per_node={config.world_size}, or drop world_size")
    if config.train.batch_size % comm.world_size:
        raise ConfigError(f"train.batch_size: {config.train.batch_size} is the global batch, "
                          f"split over {comm.world_size} ranks; it must be a multiple of "
                          f"{comm.world_size}")
    device = pick_device(config.device)
    if comm.distributed:
        device = comm.device
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest conv once
    return device


def load_training_set(config: cfg.Config) -> Any:
    """The split a run trains on, checked to hold at least one batch."""
    dataset = load_dataset(config, config.train.split)
    if config.train.batch_size > len(dataset):
        raise ConfigError(f"train.batch_size: {config.train.batch_size} is larger than the "
                          f"{len(dataset)} training images")
    return dataset


def training_network(config: cfg.Config, network: Network, device: torch.device,
                     comm: Comm = SINGLE) -> tuple[Network, Any]:
    """``network`` on its device, and the callable that trains it (under DDP, compiled).

    The wrapped and compiled callables share the module's parameters, so
    checkpoints keep the plain module's keys.
    """
    sync_bn, bn_batch = config.train.sync_bn, config.train.bn_batch
    check_bn_batch(config, comm)
    if comm.distributed and sync_bn and device.type != "cuda":
        raise ConfigError("train.sync_bn: PyTorch's SyncBatchNorm needs CUDA; on the CPU "
                          "set it to false or null (BatchNorm statistics per rank)")
    if bn_batch is not None:  # per rank, in groups: the authors' DataParallelTable
        network = ghost_batchnorm(network, bn_batch)
    elif comm.distributed and (sync_bn or (sync_bn is None and device.type == "cuda")):
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network.to(device).to(memory_format=memory_format(config))
    forward: Any = network
    if comm.distributed:  # gradients averaged over the ranks
        forward = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[comm.local_rank] if device.type == "cuda" else None)
    if config.train.compile:
        forward = torch.compile(forward)
    return network, forward


def check_bn_batch(config: cfg.Config, comm: Comm = SINGLE) -> None:
    """Refuse a ``train.bn_batch`` that SyncBatchNorm would undo or a rank's batch cannot hold.

    Each rank normalises its own share of the batch in groups of ``bn_batch``; a rank
    holding fewer images than ``bn_batch`` (of a batch that has that many) would
    normalise fewer than asked, so it is refused rather than quietly changed.
    """
    t = config.train
    if t.bn_batch is None:
        return
    if comm.distributed and t.sync_bn:
        raise ConfigError(f"train.sync_bn: SyncBatchNorm pools each BatchNorm's statistics over "
                          f"every rank, train.bn_batch={t.bn_batch} splits them; set sync_bn to "
                          "false (or null) with bn_batch, or bn_batch to null")
    share = t.batch_size // comm.world_size
    if share // -(-share // t.bn_batch) < 2:  # the near-equal groups: BatchNorm needs 2 images
        raise ConfigError(f"train.bn_batch: {t.bn_batch} splits each rank's {share} images into "
                          "groups of 1, which BatchNorm cannot normalise; set it to 2 or more "
                          "images per group (or null)")
    if share < min(t.bn_batch, t.batch_size):
        raise ConfigError(f"train.bn_batch: {t.bn_batch} images per BatchNorm statistic, but each "
                          f"of the {comm.world_size} ranks holds {share} of the batch of "
                          f"{t.batch_size}; use at most {max(1, t.batch_size // t.bn_batch)} "
                          f"rank(s), or set train.bn_batch to {share} or less (or null)")


def memory_format(config: cfg.Config) -> torch.memory_format:
    """The layout of the network's weights and inputs: channels-last when the config asks."""
    return torch.channels_last if config.train.channels_last else torch.contiguous_format


def build_optimizer(config: cfg.Config, *modules: torch.nn.Module | None) -> torch.optim.SGD:
    """Plain SGD (with the config's momentum and weight decay) over ``modules``' parameters."""
    parameters = [p for module in modules if module is not None for p in module.parameters()]
    t = config.train
    return torch.optim.SGD(parameters, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def load_dataset(config: cfg.Config, split: str) -> Any:
    """One split of the configured dataset."""
    spec = config.data
    dataset = registry("dataset").create(spec["name"], split=split, **cfg.component_options(spec))
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
                            num_classes=int(dataset.num_classes), device=device,
                            create=create_component, comm=comm)
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
    preprocess = registry("preprocess").create(pre_spec["name"], in_channels=dataset.channels,
                                               **cfg.component_options(pre_spec))
    backbone = registry("backbone").create(bb_spec["name"], in_chans=preprocess.out_channels,
                                           image_size=size, **cfg.component_options(bb_spec))
    hidden = config.head.hidden if config.head.hidden is not None else backbone.default_head
    head = ProjectionHead(backbone.num_features, hidden, method.head_dim,
                          config.head.dropout, config.head.batchnorm,
                          config.head.dropout_where, config.head.init)
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
