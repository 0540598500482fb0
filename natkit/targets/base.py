"""The target-distribution interface and a counter-based Gaussian generator."""

from __future__ import annotations

import math
from typing import Any

import torch

from natkit.values import OptionError

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 in two halves, so no int64 product can overflow
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser, on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def hashed_uniform(seed: int, ids: torch.Tensor, count: int) -> torch.Tensor:
    """Uniform(0, 1) float64 values ``[len(ids), count]``, a pure function of (seed, id, column)."""
    ids = ids.to(torch.int64).reshape(-1, 1)
    key = _fmix32(torch.tensor((seed & _M32) ^ 0x9E3779B9, device=ids.device))
    key = key ^ ((seed >> 32) & _M32)
    h = _fmix32(key ^ (ids & _M32))
    h = _fmix32(h ^ _fmix32((ids >> 32) & _M32) ^ 0x7F4A7C15)
    cols = torch.arange(count, device=ids.device, dtype=torch.int64).reshape(1, -1)
    h = _fmix32(h ^ _fmix32(_mul32(cols, 0x27D4EB2F) ^ 0x165667B1))
    return (h.to(torch.float64) + 0.5) / 2.0**32


def hashed_normal(seed: int, ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Standard normal float32 values ``[len(ids), dim]``, a pure function of (seed, id, column)."""
    pairs = (dim + 1) // 2
    u = hashed_uniform(seed, ids, 2 * pairs)
    radius = torch.sqrt(-2.0 * torch.log(u[:, :pairs]))
    angle = 2.0 * math.pi * u[:, pairs:]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return z[:, :dim].to(torch.float32)


class Targets:
    """A target distribution: maps target ids to rows of unit vectors in R^dim.

    Subclasses implement :meth:`__call__` as a pure function of (seed, id), so a
    run can cache the bank or regenerate any slice of it on demand.
    """

    name = "targets"

    def __init__(self, dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise OptionError("dim", f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the targets of ``ids`` as a float32 ``[len(ids), dim]`` tensor on ids' device."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The arguments that rebuild this distribution (saved in checkpoints)."""
        return {"dim": self.dim, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"
