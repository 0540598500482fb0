"""Export a run's trained network in two forms that load outside natkit's runs.

``model.pt`` is the backbone as a plain state_dict, with no wrapper prefix and no
head: a natkit AlexNet loads it into ``natkit.create_backbone("alexnet", ...)``, a
timm backbone into ``timm.create_model(name, in_chans=..., num_classes=0)`` (and,
for models that share timm's layout such as resnets, into torchvision's with
``strict=False``); ``model.pt.json`` says how to rebuild it and what input it expects.
``model.rgb.safetensors`` is one module that takes RGB images, its preprocessing
folded in (:mod:`natkit.pretrained`; ``natkit.load_pretrained`` rebuilds it), and
``model.rgb.json`` its model card. Both carry the BatchNorm statistics the
evaluation probes with, recomputed over the unaugmented training images.

An existing file is never overwritten unless ``force`` is given, and all files
are written to temporary files first and then renamed into place, so a failed or
interrupted export leaves whatever was there before. A path the system refuses
(a name over 255 bytes, a read-only or unwritable directory, /proc, a full disk)
costs one line naming ``--out`` and the path: see :mod:`natkit.outputs`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.nn.modules.batchnorm import _BatchNorm

from natkit import config as cfg
from natkit.builders import (
    initial_network,
    input_size,
    load_dataset,
    pick_device,
    read_run_config,
)
from natkit.checkpoint import CHECKPOINT, RESULTS, load_checkpoint
from natkit.errors import CheckpointError, ConfigError, OutputError, clip
from natkit.evaluation.checks import require_finite, require_fit
from natkit.evaluation.features import recalibrate_batchnorm
from natkit.files import write_files
from natkit.outputs import check_output_file, output_errors
from natkit.pretrained import FORMAT, Encoder, encoder_bytes
from natkit.progress import EvalProgress, Phase
from natkit.version import __version__

BATCHNORM_CHOICES = ("recompute", "running")

PREFIX = "backbone."
TIMM_PREFIX = "model."  # natkit's timm wrapper holds the timm model as .model


def backbone_state(model_state: dict[str, torch.Tensor], backbone: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a natkit model state, with natkit's prefixes removed."""
    state = {k[len(PREFIX):]: v for k, v in model_state.items() if k.startswith(PREFIX)}
    if backbone.startswith("timm:"):
        state = {k[len(TIMM_PREFIX):] if k.startswith(TIMM_PREFIX) else k: v
                 for k, v in state.items()}
    return state


# ---------------------------------------------------------------- export


def export_files(out: Path) -> ExportFiles:
    """The four files an export to ``out`` writes (see :class:`ExportFiles`)."""
    out = Path(out)
    stem = out.name[:-len(out.suffix)] if out.suffix else out.name
    return ExportFiles(weights=out, info=out.with_name(out.name + ".json"),
                       encoder=out.with_name(stem + ".rgb.safetensors"),
                       card=out.with_name(stem + ".rgb.json"))


@dataclass(frozen=True)
class ExportFiles:
    """``model.pt`` (the backbone's state_dict) and ``model.pt.json`` (how to load it);
    ``model.rgb.safetensors`` (the RGB encoder) and ``model.rgb.json`` (its model card)."""

    weights: Path
    info: Path
    encoder: Path
    card: Path

    def all(self) -> list[Path]:
        """The four paths, the backbone's first."""
        return [self.weights, self.info, self.encoder, self.card]


def _json_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _earlier_export(files: ExportFiles, path: Path) -> bool:
    """Whether ``path`` (one of ``files``) belongs to an earlier export, as the description
    beside it says: the backbone's pair by its description, the encoder's by its card."""
    if path in (files.weights, files.info):
        info = _json_file(files.info.resolve())
        return info is not None and {"backbone", "load_with", "source"} <= info.keys()
    card = _json_file(files.card.resolve())
    return card is not None and card.get("format") == FORMAT


def refuse_run_files(run_dir: Path, files: ExportFiles) -> None:
    """Refuse (OutputError) an export that would replace a file of the run, whatever ``--force``.

    Inside the run directory (symbolic links followed) an export may write new files,
    or replace an earlier export's; never a checkpoint, the config, metrics,
    results, snapshots or any other file the run wrote.
    """
    root = run_dir.resolve()
    for path in files.all():
        target = path.resolve()
        if root not in target.parents or not (target.exists() or path.is_symlink()):
            continue
        if _earlier_export(files, path):
            continue
        raise OutputError(f"--out: '{path}' is inside the run directory '{run_dir}' and "
                          f"would replace its file '{target.relative_to(root)}'; an export never "
                          "writes over a run's own files, even with --force: choose another path",
                          option="--out")


def _check_outputs(run_dir: Path, files: ExportFiles, force: bool) -> None:
    if len(set(files.all())) < len(files.all()):  # e.g. model.rgb: model.rgb.json twice
        raise OutputError(f"--out: '{files.weights}' would give two of the export's files one "
                          "name; give the weights another suffix, e.g. model.pt", option="--out")
    check_output_file(files.weights, force, companions={files.encoder: "the RGB encoder",
                                                        files.card: "its model card"})
    refuse_run_files(run_dir, files)


def export(run_dir: Path, out: Path, *, force: bool = False, batchnorm: str = "recompute",
           device: str = "auto", console: Console | None = None) -> dict[str, Any]:
    """Export a run's backbone (to ``out``) and its RGB encoder (see :func:`export_files`).

    ``batchnorm='recompute'`` gives both the BatchNorm statistics the evaluation
    probes with (exact averages over the unaugmented training images, computed
    on ``device``); ``'running'`` keeps the checkpoint's running averages and
    needs no training data. Refuses (OutputError, naming ``--out``) an ``out``
    that is a directory or whose files exist, unless ``force``, and a checkpoint
    whose model state is not finite. Returns the backbone's description.
    """
    if batchnorm not in BATCHNORM_CHOICES:
        raise ConfigError(f"--batchnorm: expected one of {', '.join(BATCHNORM_CHOICES)}, "
                          f"got {clip(batchnorm)!r}")
    try:  # checked before any work, whether or not it is used
        where = pick_device(device)
    except ConfigError as exc:
        raise ConfigError(f"--{exc}") from None
    run_dir, out = Path(run_dir), Path(out)
    files = export_files(out)
    _check_outputs(run_dir, files, force)
    config = read_run_config(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        raise CheckpointError(f"'{run_dir}' holds no {CHECKPOINT} yet; train it first")
    state = load_checkpoint(run_dir / CHECKPOINT)
    require_finite(state["model"], run_dir / CHECKPOINT, "exported")
    dataset = load_dataset(config, "test")
    # the load recipe printed below is this config's: refuse weights it would not load
    with torch.random.fork_rng(devices=[]):  # building it draws weights: leave the caller's RNG
        network = initial_network(config, dataset)
    require_fit(network, state["model"], run_dir / CHECKPOINT)
    network.load_state_dict(state["model"])
    statistics = _batchnorm_statistics(network, config, batchnorm, where, console)
    name = config.backbone["name"]
    weights = backbone_state(network.state_dict(), name)
    if not weights:
        raise CheckpointError(f"checkpoint '{run_dir / CHECKPOINT}' holds no backbone weights")
    preprocess = network.preprocess
    options = {k: v for k, v in config.backbone.items() if k != "name"}
    size = input_size(config, dataset)  # augment.crop_size: the centre crop of the loaded image
    note = ("the weights expect the preprocessor's output (e.g. 2 Sobel channels), computed "
            "from images scaled to [0, 1]")
    if size != dataset.image_size:
        note += (f", {size} px: the centre {size}x{size} of images loaded at "
                 f"{dataset.image_size} px")
    info = {
        "backbone": name,
        "options": options,
        "in_chans": preprocess.out_channels,
        "image_size": size,
        "input": {"preprocess": config.preprocess, "from_channels": dataset.channels,
                  "note": note},
        "batchnorm": statistics,
        "load_with": _how_to_load(name, options, preprocess.out_channels, size,
                                  getattr(network.backbone, "img_size", None)),
        "epochs_trained": int(state["epoch"]),
        "natkit_version": __version__,
        "source": str(run_dir),
        "rgb_encoder": files.encoder.name,
    }
    encoder = Encoder(network.preprocess, network.backbone, channels=dataset.channels,
                      input_size=size, layer=config.eval.layer, tap_pool=config.eval.tap_pool)
    card = model_card(config, encoder, dataset, state, run_dir, statistics)
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    contents = {files.weights: buffer.getvalue(), files.info: _json_bytes(info),
                files.encoder: encoder_bytes(encoder, card), files.card: _json_bytes(card)}
    with output_errors("--out", *files.all()):
        _check_outputs(run_dir, files, force)  # again: they may have appeared meanwhile
        out.parent.mkdir(parents=True, exist_ok=True)
        write_files(contents)
    return info


def summary(out: Path, info: dict[str, Any]) -> list[str]:
    """What an export to ``out`` wrote and how to load each form: lines for the user."""
    files = export_files(Path(out))
    return [f"wrote {files.weights} ({info['backbone']}, {info['in_chans']} input channels) "
            f"and {files.info.name}",
            f"load it with: {info['load_with'].replace('FILE', repr(str(files.weights)))}",
            f"wrote {files.encoder} (RGB images in [0, 1]) and its model card {files.card.name}",
            f"load it with: natkit.load_pretrained({str(files.encoder)!r})"]


def _json_bytes(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _batchnorm_statistics(network: torch.nn.Module, config: cfg.Config, batchnorm: str,
                          device: torch.device, console: Console | None) -> str:
    """Give ``network`` the statistics ``batchnorm`` asks for; says which, for the files."""
    layers = sum(isinstance(m, _BatchNorm) for m in network.backbone.modules())
    if not layers:
        return "none: the backbone has no BatchNorm"
    if batchnorm == "running":
        return "running averages of the augmented training batches, as the checkpoint holds them"
    train_set = load_dataset(config, "train")
    phase = Phase("batchnorm", "recomputing BatchNorm statistics", "features", len(train_set),
                  "images")
    quiet = console or Console(stderr=True, quiet=True)
    with EvalProgress(quiet, [phase]) as progress:
        progress.phase("batchnorm")
        recalibrate_batchnorm(network.to(device), train_set, device, config.eval.batch_size,
                              progress=progress)
    network.cpu()
    return (f"recomputed over the {len(train_set)} unaugmented training images, as the "
            "evaluation probes the features")


def model_card(config: cfg.Config, encoder: Encoder, dataset: Any, state: dict[str, Any],
               run_dir: Path, batchnorm: str) -> dict[str, Any]:
    """What a user of the RGB encoder needs to know: how to rebuild it, its input, its results."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, encoder.input_size, encoder.input_size)
        feature_dim = int(encoder.eval()(probe).shape[1])
    results = run_dir / RESULTS
    return {
        "format": FORMAT,
        "architecture": {"backbone": config.backbone, "preprocess": config.preprocess,
                         "channels": dataset.channels, "input_size": encoder.input_size,
                         "layer": encoder.layer, "tap_pool": encoder.tap_pool},
        "input": {
            "layout": "[batch, 3, height, width], RGB, float",
            "range": [0.0, 1.0],
            "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
            "size": encoder.input_size,
            "resize": (f"shorter side to {dataset.image_size} px, then the centre "
                       f"{encoder.input_size} x {encoder.input_size} (larger inputs are "
                       "centre-cropped by the module)"),
            "note": ("no mean/std normalisation: the module converts to the run's "
                     f"{dataset.channels} channel(s) and applies its preprocessor "
                     f"'{config.preprocess['name']}' itself, frozen"),
        },
        "feature_dim": feature_dim,
        "batchnorm": batchnorm,
        "epochs_trained": int(state["epoch"]),
        "results": _json_file(results) if results.is_file() else None,
        "config": config.to_dict(),
        "versions": {"natkit": __version__, "torch": torch.__version__},
        "source": str(run_dir),
        "load_with": "natkit.load_pretrained(FILE)",
    }


def _how_to_load(name: str, options: dict[str, Any], in_chans: int, image_size: int,
                 img_size: int | None = None) -> str:
    if name.startswith("timm:"):
        # a transformer was built for the run's images (its position embeddings depend on it)
        sized = {} if img_size is None else {"img_size": img_size}
        extra = "".join(f", {k}={v!r}" for k, v in {**sized, **options}.items())
        return (f"timm.create_model({name[5:]!r}, in_chans={in_chans}, num_classes=0{extra})"
                ".load_state_dict(torch.load(FILE, weights_only=True))")
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    return (f"natkit.create_backbone({name!r}, in_chans={in_chans}, image_size={image_size}{args})"
            ".load_state_dict(torch.load(FILE, weights_only=True))")
