"""Networks others can load: a trained run's RGB feature extractor, in safetensors.

``natkit export`` writes one :class:`Encoder` per run: a module that takes RGB
images in [0, 1] and returns the features natkit's probes read, with the run's
preprocessing (grayscale, Sobel, ...) folded in as frozen layers. Its
safetensors file holds the weights and, in its metadata, the model card: how
to rebuild the module, what it expects as input, and the probes' results.
:func:`load_pretrained` rebuilds it from that one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from natkit.augment import center_crop
from natkit.errors import CheckpointError, ConfigError, one_line
from natkit.plugins import registry
from natkit.preprocess.base import to_channels
from natkit.schema import component_options

FORMAT = "natkit-encoder/1"
METADATA_KEY = "natkit"  # the model card, as JSON, in the safetensors file's metadata


class Encoder(nn.Module):
    """RGB images ``[b, 3, h, w]`` in [0, 1] -> features ``[b, feature_dim]``, as natkit probes them.

    Images are converted to the channels the run trained on (grayscale: the
    channel mean), centre-cropped to ``input_size`` where larger, passed through
    the frozen preprocessor and the backbone, and read at tap ``layer`` (a map is
    average-pooled to ``tap_pool`` x ``tap_pool`` and flattened).
    """

    def __init__(self, preprocess: nn.Module, backbone: nn.Module, *, channels: int,
                 input_size: int, layer: str = "last", tap_pool: int = 2) -> None:
        super().__init__()
        self.preprocess = preprocess.requires_grad_(False)
        self.backbone = backbone
        self.channels = channels
        self.input_size = input_size
        self.layer = layer
        self.tap_pool = tap_pool
        self.card: dict[str, Any] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [batch, 3, height, width], got shape "
                             f"{tuple(images.shape)}")
        if min(images.shape[-2:]) < self.input_size:
            raise ValueError(f"expected images of at least {self.input_size} x {self.input_size} "
                             f"(the model card's input size), got {tuple(images.shape[-2:])}")
        x = to_channels(center_crop(images, self.input_size), self.channels)
        out = self.backbone.forward_taps(self.preprocess(x), [self.layer])[self.layer]
        if out.ndim == 4:
            out = F.adaptive_avg_pool2d(out, self.tap_pool)
        return out.flatten(1)


def build_encoder(architecture: dict[str, Any]) -> Encoder:
    """An untrained :class:`Encoder` as a model card's ``architecture`` describes it."""
    pre, bb = architecture["preprocess"], architecture["backbone"]
    preprocess = registry("preprocess").create(pre["name"], in_channels=architecture["channels"],
                                               **component_options(pre))
    backbone = registry("backbone").create(bb["name"], in_chans=preprocess.out_channels,
                                           image_size=architecture["input_size"],
                                           **component_options(bb))
    return Encoder(preprocess, backbone, channels=architecture["channels"],
                   input_size=architecture["input_size"], layer=architecture["layer"],
                   tap_pool=architecture["tap_pool"])


def encoder_bytes(encoder: Encoder, card: dict[str, Any]) -> bytes:
    """The encoder's tensors as a safetensors file whose metadata holds ``card``."""
    from safetensors.torch import save

    # safetensors stores each tensor once, contiguous: copies, so shared or strided ones save
    state = {name: tensor.detach().cpu().contiguous().clone()
             for name, tensor in encoder.state_dict().items()}
    return save(state, metadata={METADATA_KEY: json.dumps(card)})


def read_card(path: Path | str) -> dict[str, Any]:
    """The model card in an encoder's safetensors file (CheckpointError naming the file if none)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise CheckpointError(f"'{path}' {what} (expected the .safetensors file natkit export "
                              "writes)")
    try:
        with safe_open(str(path), framework="pt") as opened:
            metadata = opened.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not a readable safetensors file: {exc}") from None
    try:
        card = json.loads(metadata[METADATA_KEY])
    except (KeyError, ValueError):
        raise CheckpointError(f"'{path}' holds no natkit model card: it was not written by "
                              "natkit export") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        found = card.get("format") if isinstance(card, dict) else None
        raise CheckpointError(f"'{path}' is a {found!r} file; this natkit reads {FORMAT!r}")
    return card


def load_pretrained(path: Path | str, *, device: str | torch.device = "cpu") -> Encoder:
    """The RGB encoder ``natkit export`` wrote to ``path`` (.safetensors), weights loaded, in eval mode."""
    from safetensors.torch import load_file

    card = read_card(path)
    try:
        torch.empty(0, device=device)  # the device exists here: refused before any building
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: cannot use {str(device)!r} here: "
                          f"{one_line(str(exc), 120)}") from None
    encoder = build_encoder(card["architecture"])
    state = load_file(str(path), device="cpu")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:  # torch lists every missing, unexpected or misshapen tensor
        raise CheckpointError(f"'{path}' does not fit its model card's architecture: "
                              f"{one_line(str(exc))}") from None
    encoder.card = card
    return encoder.to(device).eval()
