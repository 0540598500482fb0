"""The config's schema: every field of a run, its type, default, bounds and help, in one place.

Plain dataclasses with no behaviour beyond :meth:`Config.to_dict`: the layers
that read a config (components, methods, the engine) import the types from
here, and :mod:`natkit.config` builds and validates instances.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from natkit.kinds import TABLE
from natkit.values import FLOAT32_SAFE, MAX_WIDTH, Bounds

# config section -> registry kind, from the one table of kinds
COMPONENT_SECTIONS: dict[str, str] = {kind.section: kind.name for kind in TABLE}

# Keys of earlier natkit versions, and what took their place (for a one-line hint).
REPLACED_KEYS = {
    "mode": "method.name (mode: supervised is now method: {name: supervised})",
    "nat": "options of the nat method (nat.permute_every is now method.permute_every)",
    "supervised": "options of the supervised method (supervised.loss is now method.loss)",
}

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
        ge=1, le=MAX_WIDTH)
    dropout: float = option(0.5, "dropout rate of the hidden fc layers (see dropout_where)",
                            ge=0.0, lt=1.0)
    dropout_where: Literal["before_each", "between"] = option(
        "before_each", "before_each: dropout before every hidden fc layer (torchvision's "
                       "AlexNet); between: only between hidden layers, i.e. once after fc6 "
                       "(the authors' alexnet.lua)")
    batchnorm: bool = option(True, "BatchNorm after each hidden fc layer (the authors' code)")
    init: Literal["default", "torch7"] = option(
        "default", "initialisation of the head's layers: default (PyTorch's: Linear weights and "
                   "biases U(+-1/sqrt(fan_in)), BatchNorm weights 1) or torch7 (the authors' Lua "
                   "defaults: the same Linear draws, BatchNorm weights U(0, 1))")


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
    lr: float = option(0.05, "base step size l0", gt=0.0, le=FLOAT32_SAFE)
    momentum: float = option(0.9, "SGD momentum (the paper: 0)", ge=0.0, lt=1.0)
    weight_decay: float = option(5e-4, "L2 weight decay", ge=0.0, le=FLOAT32_SAFE)
    warmup_steps: int = option(50, "linear warm-up from 0 to lr over this many steps", ge=0)
    lr_t0: int = option(
        0, "steps at constant lr (after warm-up) before the decay l0 / (1 + gamma (t - t0))", ge=0)
    lr_gamma: float = option(0.002, "decay rate gamma of l0 / (1 + gamma (t - t0)); 0 keeps lr "
                                    "constant", ge=0.0)
    split: str = option("train", "dataset split to train on (e.g. 'train+unlabeled' for stl10)")
    num_workers: int = option(0, "DataLoader worker processes (0 loads in the main process)",
                              ge=0, le=256)
    amp: bool = option(False, "bfloat16 autocast on CUDA (ignored on the CPU)")
    channels_last: bool = option(
        False, "channels-last memory format for the network and its inputs (faster convolutions "
               "on CUDA, above all with amp)")
    compile: bool = option(False, "torch.compile the network: faster CUDA steps after a one-off "
                                  "compilation")
    sync_bn: bool | None = option(
        None, "under torchrun, BatchNorm statistics over the global batch (SyncBatchNorm), as in "
              "one process; false: per rank; null: on CUDA yes, on the CPU no (PyTorch's "
              "SyncBatchNorm needs CUDA), and no when bn_batch is set")
    bn_batch: int | None = option(
        None, "images per BatchNorm statistic in training: each rank's batch is normalised in "
              "groups of this many (ghost BatchNorm; the first group moves the running "
              "statistics), as the authors' two GPUs under DataParallelTable normalised 128 each "
              "of 256; null: the whole batch of each rank (or the global batch, see sync_bn)",
        ge=2)
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
    tap_pool: int = option(2, "intermediate taps are average-pooled to this grid size", ge=1,
                           le=64)
    val_fraction: float = option(
        0.2, "fraction of the training split held out to choose probe settings", gt=0.0, lt=1.0)
    linear_weight_decay: list[float] = option(
        [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], "L2 strengths tried by the linear probe", ge=0.0,
        min_len=1)
    linear_iterations: int = option(200, "L-BFGS iterations of the linear probe", ge=1)
    mlp_hidden: int = option(512, "hidden width of the MLP probe (the paper: 4096)", ge=1,
                             le=MAX_WIDTH)
    mlp_weight_decay: list[float] = option([1e-5, 1e-3], "weight-decay grid of the MLP probe",
                                           ge=0.0, le=FLOAT32_SAFE, min_len=1)
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
                                gt=0.0, le=FLOAT32_SAFE)
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
                                        "4096)", ge=1, le=MAX_WIDTH)
    transfer_init: Literal["default", "torch7"] = option(
        "default", "initialisation of the transfer MLP: default (PyTorch's: Linear weights and "
                   "biases U(+-1/sqrt(fan_in)), BatchNorm weights 1) or torch7 (the authors' Lua "
                   "defaults, test.lua's arch.train: the same Linear draws, BatchNorm weights "
                   "U(0, 1))")
    transfer_crop_norm: Literal["each", "joint"] = option(
        "each", "where the preprocessor standardises each image (preprocess.normalize), how the "
                "transfer probe's test crops are standardised: each crop alone, or the crops of "
                "an image together, one mean and std over all their values (imagenet.lua: "
                "transform.merge of the ten crops, then transform.normalize)")
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


def defaults() -> dict[str, Any]:
    """The default config as a plain dict."""
    return Config().to_dict()


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
