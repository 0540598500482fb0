"""Targets on the canonical basis: the paper's discrete ablation."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F

from natkit.targets.base import Targets
from natkit.values import MAX_WIDTH, Bounds, OptionError


class BasisTargets(Targets):
    """k one-hot vectors of R^dim; target id i is e_(i mod k), so classes stay balanced."""

    name = "basis"

    def __init__(self, dim: int, k: int | None = None, seed: int = 0) -> None:
        super().__init__(dim, seed)
        self.k = dim if k is None else int(k)
        if not 1 <= self.k <= dim:
            raise OptionError("k", f"k must be between 1 and dim={dim}, got k={self.k}")

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return F.one_hot(ids.to(torch.int64) % self.k, self.dim).to(torch.float32)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "k": self.k}


def create(*, dim: Annotated[int, Bounds(ge=1, le=MAX_WIDTH)] = 128,
           k: Annotated[int | None, Bounds(ge=1)] = None,
           seed: Annotated[int | None, Bounds(ge=0)] = None) -> BasisTargets:
    """One-hot targets e_(id mod k) in R^dim (the paper's discrete ablation; k defaults to dim).

    Args:
        dim: dimension of the target space (and of the projection head's output). A config
            that switches from another target distribution keeps that one's dim.
        k: number of distinct one-hot targets, at most dim; null: dim.
        seed: unused by one-hot targets; kept for the common interface (null: the run's seed).
    """
    return BasisTargets(dim, k, 0 if seed is None else seed)
