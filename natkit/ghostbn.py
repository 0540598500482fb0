"""BatchNorm over groups of a batch ("ghost" BatchNorm): the authors' two GPUs on one.

The authors trained with ``main.sh -ngpu 2``: ``alexnet.lua``'s ``arch.parallelize`` wraps
the network in cunn's ``nn.DataParallelTable(1, true, true)``, which splits each batch
of 256 along its first dimension into two halves of 128 (``sliceRange``), one per GPU,
and runs a replica of the whole network on each. So every BatchNorm normalised 128
images with their own statistics. The replicas share their parameters (GPU 1's are
broadcast after each update, ``syncParameters``) but not their buffers: each replica's
running mean and variance follow its own halves, and the model saved and tested
(``arch.saveNamed``: ``removeParallelTable(net)``, i.e. ``dpt:get(1)``) is GPU 1's, whose
statistics come from the first half of every batch.

:func:`ghost_batchnorm` gives the same on one device: in training mode each BatchNorm
normalises consecutive groups of at most ``group`` images with their own batch statistics
(a batch of ``n`` splits into ``ceil(n / group)`` near-equal groups, the first ones one
larger where it does not divide, as ``sliceRange`` splits), and only the first group
updates the running statistics. In evaluation mode nothing changes. The modules keep
BatchNorm's parameters, buffers and state_dict keys, so checkpoints move freely between
runs with and without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def grouped_batchnorm(bn: _BatchNorm, x: torch.Tensor,
                      forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``bn``'s training output on ``x`` normalised in groups of at most ``bn.group`` images.

    ``forward`` is BatchNorm's own forward: the first group goes through it (and moves the
    running statistics), the others are normalised with their batch statistics alone.
    """
    group = bn.group
    assert isinstance(group, int)
    n = x.shape[0]
    if not bn.training or n <= group:
        return forward(x)
    first, *rest = torch.tensor_split(x, math.ceil(n / group))
    return torch.cat([forward(first), *(
        F.batch_norm(part, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for part in rest)])


class _Ghost:
    """What makes a BatchNorm class a ghost one: its ``group``, and a grouped training forward."""

    def __init__(self, *args: Any, group: int = 128, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_batchnorm(self, x, super().forward)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group={self.group}"


class GhostBatchNorm1d(_Ghost, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` over groups of at most ``group`` images in training."""


class GhostBatchNorm2d(_Ghost, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` over groups of at most ``group`` images in training."""


GHOSTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: GhostBatchNorm1d, nn.BatchNorm2d: GhostBatchNorm2d}


def ghost_batchnorm(module: nn.Module, group: int) -> nn.Module:
    """``module`` with every BatchNorm1d and BatchNorm2d normalising groups of ``group`` images.

    Like :func:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`: each BatchNorm is replaced
    by its ghost twin holding the very same parameters and buffers (nothing is drawn or
    copied), and ``module`` itself is returned changed (or the twin, if it is a BatchNorm).
    """
    if group < 2:
        raise ValueError(f"group must be at least 2 images, got {group}")
    ghost = GHOSTS.get(type(module))
    if ghost is not None:
        assert isinstance(module, _BatchNorm)
        twin = ghost(module.num_features, module.eps, module.momentum, module.affine,
                     module.track_running_stats, group=group)
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            setattr(twin, name, getattr(module, name))
        return twin.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, ghost_batchnorm(child, group))
    return module
