"""A balanced mixture of von Mises-Fisher clusters on the unit sphere, as natkit targets."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from natkit.targets import Targets, hashed_normal, hashed_uniform
from natkit_vmf.wood import CANDIDATES, wood_cosines

# Stream numbers of the per-target randomness; the cluster centres use the seed itself.
_WOOD_STREAM = 1
_TANGENT_STREAM = 2


def stream_seed(seed: int, stream: int) -> int:
    """A 64-bit seed for one independent stream of (seed, stream), derived by hashing."""
    # hashed_uniform returns (h + 0.5) / 2**32 for a 32-bit hash h: recover h exactly
    h = hashed_uniform(seed, torch.tensor([stream]), 2)[0] * 2.0**32 - 0.5
    high, low = (int(v) for v in h.tolist())
    return high << 32 | low


class VMFTargets(Targets):
    """k von Mises-Fisher clusters of concentration kappa; target id i belongs to cluster i mod k.

    A target is a pure function of (seed, id): the centre of cluster c is the normalised
    ``hashed_normal(seed, c)``, and the target is an exact vMF draw around it (Wood's
    algorithm on counter-based uniforms). Nothing of size n x dim is ever built.
    """

    name = "vmf"

    def __init__(self, dim: int, seed: int = 0, k: int = 10, kappa: float = 50.0) -> None:
        if dim < 2:
            raise ValueError(f"dim must be >= 2 (the sphere of R^1 has no vMF clusters), got {dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not (math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa}")
        super().__init__(dim, seed)
        self.k = int(k)
        self.kappa = float(kappa)
        self._wood_seed = stream_seed(self.seed, _WOOD_STREAM)
        self._tangent_seed = stream_seed(self.seed, _TANGENT_STREAM)

    def clusters(self, ids: torch.Tensor) -> torch.Tensor:
        """The cluster of each target id: ``id mod k``, so every cluster holds n / k targets."""
        return torch.remainder(ids.to(torch.int64), self.k)

    def centres(self, clusters: torch.Tensor | None = None) -> torch.Tensor:
        """Unit mean directions, float32 ``[len(clusters), dim]`` (all k when None)."""
        if clusters is None:
            clusters = torch.arange(self.k)
        return self._centres(clusters.to("cpu")).to(torch.float32).to(clusters.device)

    def _centres(self, clusters: torch.Tensor) -> torch.Tensor:
        return F.normalize(hashed_normal(self.seed, clusters, self.dim).to(torch.float64), dim=1)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        device = ids.device
        # computed on the CPU in float64 so a target is bit-identical whatever device asks
        ids = ids.detach().to("cpu", torch.int64).reshape(-1)
        mu = self._centres(self.clusters(ids))
        one_minus_w, _ = wood_cosines(self.dim, self.kappa, self._wood_seed, ids, CANDIDATES)
        g = hashed_normal(self._tangent_seed, ids, self.dim).to(torch.float64)
        x = compose(mu, g, one_minus_w)
        return x.to(torch.float32).to(device)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "k": self.k, "kappa": self.kappa}


def compose(mu: torch.Tensor, g: torch.Tensor, one_minus_w: torch.Tensor) -> torch.Tensor:
    """Unit vectors at cosine ``w`` from ``mu``, in the direction of ``g`` orthogonal to ``mu``."""
    # the component of an isotropic Gaussian orthogonal to mu is uniform on the tangent sphere
    v = g - (g * mu).sum(dim=1, keepdim=True) * mu
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    w = (1.0 - one_minus_w).unsqueeze(1)
    # sqrt(1 - w^2) from 1 - w, exact where w rounds to 1
    s = (one_minus_w * (2.0 - one_minus_w)).clamp_min(0.0).sqrt().unsqueeze(1)
    return F.normalize(w * mu + s * v, dim=1)


def create(*, dim: int = 128, k: int = 10, kappa: float = 50.0, seed: int | None = None) -> VMFTargets:
    """Balanced mixture of k von Mises-Fisher clusters on the sphere."""
    return VMFTargets(dim, 0 if seed is None else seed, k=k, kappa=kappa)
