"""Targets drawn uniformly on the unit sphere: the paper's noise."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from natkit.targets.base import Targets, hashed_normal
from natkit.values import MAX_WIDTH, Bounds


class SphereTargets(Targets):
    """Uniform on the unit sphere of R^dim: Gaussian samples with L2-normalised rows."""

    name = "sphere"

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(hashed_normal(self.seed, ids, self.dim), dim=1)


def create(*, dim: Annotated[int, Bounds(ge=1, le=MAX_WIDTH)] = 128,
           seed: Annotated[int | None, Bounds(ge=0)] = None) -> SphereTargets:
    """Uniform on the unit sphere (the paper's targets).

    Args:
        dim: dimension of the sphere's space (and of the projection head's output).
        seed: seed of the targets (null: derived from the run's seed).
    """
    return SphereTargets(dim, 0 if seed is None else seed)
