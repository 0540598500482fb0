"""Weight initialisations a run can choose: natkit's own, or Torch7's (the authors' code).

The authors' Lua code (facebookresearch/noise-as-targets) builds its layers from nn and
cudnn modules and never re-initialises them, so every layer has Torch7's default
``reset()`` (torch/nn):

* ``nn.SpatialConvolution`` (and ``cudnn.SpatialConvolution``, which calls the same reset)
  and ``nn.Linear``: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with
  fan_in = kW * kH * nInputPlane for a convolution and the input width for a Linear;
* ``nn.BatchNormalization`` / ``nn.SpatialBatchNormalization``: weight (gamma) ~ U(0, 1),
  bias (beta) 0, running mean 0 and variance 1.

:func:`torch7_init_` draws these from the global generator, so a run seeded as natkit
seeds its initialisation repeats exactly. A bias that a BatchNorm follows cancels out;
natkit's layers have none there, the authors' have one (drawn, then without effect).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

Init = Literal["default", "torch7"]
INITS: tuple[str, ...] = ("default", "torch7")


@torch.no_grad()
def torch7_init_(module: nn.Module) -> nn.Module:
    """Re-draw every convolution, Linear and BatchNorm of ``module`` as Torch7's reset() does.

    Conv and Linear: weight and bias ~ U(-b, b) with b = 1 / sqrt(fan_in), fan_in the
    weight's elements per output unit; BatchNorm: weight ~ U(0, 1), bias 0. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            m.weight.uniform_(-bound, bound)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound)
        elif isinstance(m, _BatchNorm) and m.affine:
            m.weight.uniform_(0.0, 1.0)
            m.bias.zero_()
    return module


def initialise_(module: nn.Module, init: str) -> nn.Module:
    """Apply ``init`` to ``module``: ``default`` leaves it as built, ``torch7`` is :func:`torch7_init_`."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got '{init}'")
    return torch7_init_(module) if init == "torch7" else module
