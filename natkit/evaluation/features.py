"""Frozen features of a network, and the BatchNorm recalibration both probed networks get."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from natkit.evaluation.reporting import QUIET, ProbeProgress
from natkit.evaluation.store import FeatureStore, StoreWriter


def _index_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    return list(torch.arange(n).split(batch_size))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: object, device: torch.device,
                          batch_size: int = 256, progress: ProbeProgress = QUIET) -> int:
    """Recompute every BatchNorm's running statistics of ``model.backbone`` on ``dataset``.

    A randomly initialised network still holds BatchNorm's default statistics
    (mean 0, variance 1), which are wrong for its activations; probing it that
    way understates it badly. A trained network holds running averages of its
    augmented training batches, taken while its weights moved. The statistics
    become exact averages over the unaugmented images, for either. Returns the
    number of BatchNorm layers updated. ``progress`` advances by the images of
    each batch.
    """
    backbone = model.backbone
    layers = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    backbone.train()
    try:
        for idx in _index_batches(len(dataset), batch_size):
            backbone(model.preprocess(dataset.get_batch(idx).to(device)))
            progress.advance(len(idx))
    finally:
        for m, momentum in zip(layers, saved, strict=True):
            m.momentum = momentum
        model.eval()
    return len(layers)


def batchnorm_statistics(model: nn.Module) -> list[tuple[_BatchNorm, dict[str, torch.Tensor]]]:
    """A copy of the running statistics of every BatchNorm of ``model.backbone``.

    Give it to :func:`restore_batchnorm` to put them back after :func:`recalibrate_batchnorm`.
    """
    return [(m, {name: buf.detach().clone() for name, buf in m.named_buffers(recurse=False)})
            for m in model.backbone.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def restore_batchnorm(saved: list[tuple[_BatchNorm, dict[str, torch.Tensor]]]) -> None:
    """Put back the statistics :func:`batchnorm_statistics` copied."""
    for m, buffers in saved:
        for name, value in buffers.items():
            getattr(m, name).copy_(value)


@torch.no_grad()
def feature_batches(model: nn.Module, dataset: object, layer: str, device: torch.device,
                    batch_size: int = 256, tap_pool: int = 2,
                    progress: ProbeProgress = QUIET) -> Iterator[torch.Tensor]:
    """Features at tap ``layer``, one float32 CPU batch ``[b, d]`` at a time, in dataset order.

    ``last`` is the backbone's pooled output; an intermediate map is
    average-pooled to ``tap_pool`` x ``tap_pool`` and flattened. ``progress`` advances by
    the images of each batch.
    """
    model.eval()
    for idx in _index_batches(len(dataset), batch_size):
        out = model.taps(dataset.get_batch(idx).to(device), [layer])[layer]
        if out.ndim == 4:
            out = F.adaptive_avg_pool2d(out, tap_pool)
        yield out.flatten(1).float().cpu()
        progress.advance(len(idx))


def extract_features(model: nn.Module, dataset: object, layer: str, device: torch.device,
                     batch_size: int = 256, tap_pool: int = 2,
                     progress: ProbeProgress = QUIET) -> torch.Tensor:
    """Features of every image at tap ``layer``, float32 ``[n, d]`` in memory (small data only).

    The evaluation itself streams them to disk with :func:`write_features`.
    """
    return torch.cat(list(feature_batches(model, dataset, layer, device, batch_size, tap_pool,
                                          progress)))


def write_features(model: nn.Module, dataset: object, layer: str, device: torch.device,
                   path: Path, batch_size: int = 256, tap_pool: int = 2,
                   progress: ProbeProgress = QUIET) -> FeatureStore:
    """Features of every image at tap ``layer``, written batch by batch to a float16 store."""
    writer = StoreWriter(path)
    try:
        for x in feature_batches(model, dataset, layer, device, batch_size, tap_pool, progress):
            writer.append(x)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()
