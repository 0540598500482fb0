"""Export a run's trained backbone as a plain state_dict that loads outside natkit.

The weights carry no wrapper prefix and no head: a natkit AlexNet loads them
into ``natkit.create_backbone("alexnet", ...)``, a timm backbone into
``timm.create_model(name, in_chans=..., num_classes=0)`` (and, for models that
share timm's layout such as resnets, into torchvision's with ``strict=False``).
A JSON file beside the weights says how to rebuild the network and its input.

An existing file is never overwritten unless ``force`` is given, and both files
are written to temporary files first and then renamed into place, so a failed or
interrupted export leaves whatever was there before. A path the system refuses
(a name over 255 bytes, a read-only or unwritable directory, /proc, a full disk)
costs one line naming ``--out`` and the path: see :mod:`natkit.outputs`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from natkit import config as cfg
from natkit.builders import initial_network, input_size, load_dataset, read_run_config
from natkit.checkpoint import CHECKPOINT, load_checkpoint
from natkit.errors import CheckpointError, OutputError
from natkit.evaluation.checks import require_finite, require_fit
from natkit.files import write_files
from natkit.outputs import check_output_file, output_errors
from natkit.plugins import registry
from natkit.version import __version__

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


def _earlier_export(info_path: Path) -> bool:
    """Whether ``info_path`` is the description an earlier export wrote beside its weights."""
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and {"backbone", "load_with", "source"} <= info.keys()


def refuse_run_files(run_dir: Path, weights_path: Path, info_path: Path) -> None:
    """Refuse (OutputError) an export that would replace a file of the run, whatever ``--force``.

    Inside the run directory (symbolic links followed) an export may write new files,
    or replace an earlier export's pair; never a checkpoint, the config, metrics,
    results, snapshots or any other file the run wrote.
    """
    root = run_dir.resolve()
    for path in (weights_path, info_path):
        target = path.resolve()
        if root not in target.parents or not (target.exists() or path.is_symlink()):
            continue
        if _earlier_export(info_path.resolve()):
            continue
        raise OutputError(f"--out: '{weights_path}' is inside the run directory '{run_dir}' and "
                          f"would replace its file '{target.relative_to(root)}'; an export never "
                          "writes over a run's own files, even with --force: choose another path",
                          option="--out")



def export(run_dir: Path, out: Path, *, force: bool = False) -> dict[str, Any]:
    """Write the backbone weights to ``out`` and a description to ``out`` + '.json'.

    Refuses (OutputError, naming ``--out``) an ``out`` that is a directory or that
    exists, unless ``force``, and a checkpoint whose model state is not finite.
    """
    run_dir, out = Path(run_dir), Path(out)
    weights_path, info_path = check_output_file(out, force)
    refuse_run_files(run_dir, weights_path, info_path)
    config = read_run_config(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        raise CheckpointError(f"'{run_dir}' holds no {CHECKPOINT} yet; train it first")
    state = load_checkpoint(run_dir / CHECKPOINT)
    require_finite(state["model"], run_dir / CHECKPOINT, "exported")
    dataset = load_dataset(config, "test")
    # the load recipe printed below is this config's: refuse weights it would not load
    with torch.random.fork_rng(devices=[]):  # building it draws weights: leave the caller's RNG
        require_fit(initial_network(config, dataset), state["model"], run_dir / CHECKPOINT)
    name = config.backbone["name"]
    weights = backbone_state(state["model"], name)
    if not weights:
        raise CheckpointError(f"checkpoint '{run_dir / CHECKPOINT}' holds no backbone weights")
    preprocess = registry("preprocess").create(config.preprocess["name"],
                                               in_channels=dataset.channels,
                                               **cfg.component_options(config.preprocess))
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
        "load_with": _how_to_load(name, options, preprocess.out_channels, size),
        "epochs_trained": int(state["epoch"]),
        "natkit_version": __version__,
        "source": str(run_dir),
    }
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    with output_errors("--out", out, info_path):
        check_output_file(out, force)  # again: it may have appeared meanwhile
        refuse_run_files(run_dir, weights_path, info_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_files({weights_path: buffer.getvalue(),
                     info_path: (json.dumps(info, indent=2) + "\n").encode()})
    return info


def _how_to_load(name: str, options: dict[str, Any], in_chans: int, image_size: int) -> str:
    if name.startswith("timm:"):
        extra = "".join(f", {k}={v!r}" for k, v in options.items())
        return (f"timm.create_model({name[5:]!r}, in_chans={in_chans}, num_classes=0{extra})"
                ".load_state_dict(torch.load(FILE, weights_only=True))")
    args = "".join(f", {k}={v!r}" for k, v in options.items())
    return (f"natkit.create_backbone({name!r}, in_chans={in_chans}, image_size={image_size}{args})"
            ".load_state_dict(torch.load(FILE, weights_only=True))")
